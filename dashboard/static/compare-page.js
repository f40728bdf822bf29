// Entry of /p/{project}/compare: the compare view with its state in the URL.
// compare-early.js also runs from its own async script in the head, usually long before this module
// (whose graph is the whole view); imported here too, so its requests always precede the view's start.
import "./compare-early.js";
import { mountCompare } from "./compare.js";

mountCompare(document.getElementById("compare"), { project: document.body.dataset.project, urlState: true });
