// The create-task form: show the chosen algorithm's options, and only the privacy modes and DP it declares.
(function () {
  "use strict";
  var select = document.getElementById("algorithm");
  if (!select) { return; }
  function update() {
    var option = select.options[select.selectedIndex];
    var name = select.value;
    var modes = (option && option.dataset.modes || "1").split(" ");
    document.querySelectorAll("fieldset.options").forEach(function (fieldset) {
      var shown = fieldset.dataset.algorithm === name;
      fieldset.hidden = !shown;
      fieldset.disabled = !shown;  // a hidden algorithm's options are neither focusable nor sent
    });
    document.querySelectorAll("input[name=pom]").forEach(function (radio) {
      radio.disabled = modes.indexOf(radio.value) < 0;
      if (radio.disabled && radio.checked) {
        document.getElementById("pom-1").checked = true;
      }
    });
    var dp = document.getElementById("dp-fieldset");
    if (dp) {
      dp.disabled = !(option && option.dataset.dp === "yes");
      if (dp.disabled) { document.getElementById("dp").checked = false; }
    }
  }
  select.addEventListener("change", update);
  update();
}());
