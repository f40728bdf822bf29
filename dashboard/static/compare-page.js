// Entry of /p/{project}/compare: the compare view with its state in the URL.
import { mountCompare } from "./compare.js";

mountCompare(document.getElementById("compare"), { project: document.body.dataset.project, urlState: true });
