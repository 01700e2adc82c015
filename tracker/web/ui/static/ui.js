// Copy buttons: a button with data-copy="ID" copies the value of the element ID.
"use strict";
document.addEventListener("click", function (event) {
  var button = event.target.closest("button[data-copy]");
  if (!button) return;
  var field = document.getElementById(button.getAttribute("data-copy"));
  if (!field) return;
  var text = field.value;
  function done() {
    button.textContent = "Copied";
    setTimeout(function () { button.textContent = "Copy"; }, 1500);
  }
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, function () { field.select(); });
  } else {
    field.select();
    try { document.execCommand("copy"); done(); } catch (e) { /* selected: copy by hand */ }
  }
});
// Choosing a preset clears the custom dates' meaning: submit at once for quick use.
document.addEventListener("change", function (event) {
  var input = event.target;
  if (input.name === "preset" && input.value !== "custom" && input.form) input.form.submit();
});
// Typing a date means a custom range.
document.addEventListener("input", function (event) {
  var input = event.target;
  if ((input.name === "from" || input.name === "to") && input.form) {
    var custom = input.form.querySelector('input[name="preset"][value="custom"]');
    if (custom) custom.checked = true;
  }
});
