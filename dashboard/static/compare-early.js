// The compare page's first requests, sent while the rest of the page loads. An async module script in
// the page's head: it runs as soon as it and its few imports have arrived, without waiting for the chart
// library and the view's code, so the series query and the run fetches overlap their loading.
// The view takes what this started (compare-data.js takePrefetched) when the URL is still the same;
// should the view start first, this sends nothing.

import { readState } from "./compare-state.js";
import { prefetch } from "./compare-data.js";

// The panel grid's width before there is a layout: the viewport less main's padding (app.css).
prefetch(readState(location.search), Math.max(200, document.documentElement.clientWidth - 40));
