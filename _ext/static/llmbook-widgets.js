// Loaded between require.js and the Jupyter widget manager (see _ext/llmbook_static.py). The manager
// finds its own fonts and chunks through require.js under the module name
// "@jupyter-widgets/html-manager/dist", which would otherwise resolve next to the page (a 404 on
// every chapter page): point that name at the book's own copy, found relative to this script.
(function () {
  var here = document.currentScript ? document.currentScript.src.replace(/[^/]*$/, "") : null;
  if (here && window.require && window.require.config) {
    window.require.config({ paths: { "@jupyter-widgets/html-manager/dist": here + "vendor/html-manager/dist" } });
  }
})();

// The widget manager (html-manager 1.x) typesets widget labels through MathJax 2's API,
// MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); the book loads MathJax 3, which has no Hub, so
// every widget with a description threw "Cannot read properties of undefined (reading 'Queue')".
// Give every object assigned to window.MathJax (Sphinx's configuration, then MathJax 3 itself) a
// non-enumerable Hub whose Queue typesets with MathJax 3 once it is ready.
(function () {
  function whenReady(callback) {
    var mathjax = window.MathJax;
    if (mathjax && mathjax.typesetPromise && mathjax.startup && mathjax.startup.promise) {
      mathjax.startup.promise.then(callback);
    } else {
      setTimeout(function () { whenReady(callback); }, 50);
    }
  }
  var hub = {
    Queue: function () {
      var jobs = Array.prototype.slice.call(arguments);
      whenReady(function () {
        jobs.forEach(function (job) {
          if (Array.isArray(job) && job[0] === "Typeset" && job[2]) {
            window.MathJax.typesetPromise([job[2]]).catch(function () {});
          }
        });
      });
    },
  };
  function withHub(value) {
    if (value && typeof value === "object" && !value.Hub) {
      try {
        Object.defineProperty(value, "Hub", { value: hub, enumerable: false, configurable: true, writable: true });
      } catch (error) { /* a frozen object: leave it */ }
    }
    return value;
  }
  var current = withHub(window.MathJax);
  try {
    Object.defineProperty(window, "MathJax", {
      configurable: true,
      get: function () { return current; },
      set: function (value) { current = withHub(value); },
    });
  } catch (error) { /* already non-configurable: nothing to do */ }
})();
