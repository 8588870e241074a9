// Parley console behaviour. Loaded from /static (the Content-Security-Policy
// allows no inline script): countdowns, the FLASH alert sound, the sound
// switch, the language selector and the compose form's touched inputs.
"use strict";
(function () {
  const strings = () => document.getElementById("i18n-strings")?.dataset || {};

  function soundEnabled() {
    return localStorage.getItem("parley-sound") !== "off";
  }

  function renderSoundButton() {
    const button = document.querySelector("[data-sound-toggle]");
    if (!button) return;
    const on = soundEnabled();
    button.setAttribute("aria-pressed", on ? "true" : "false");
    button.textContent = on ? strings().soundOn : strings().soundOff;
  }

  let audio = null;
  function beep() {
    if (!soundEnabled()) return;
    try {
      audio = audio || new (window.AudioContext || window.webkitAudioContext)();
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = "square";
      osc.frequency.value = 880;
      gain.gain.value = 0.08;
      osc.connect(gain).connect(audio.destination);
      osc.start();
      osc.stop(audio.currentTime + 0.6);
    } catch (e) {
      /* no audio device: the banner still shows */
    }
  }

  const announced = new Set(JSON.parse(sessionStorage.getItem("parley-announced") || "[]"));
  function announceFlash(root) {
    root.querySelectorAll("[data-flash-id]").forEach((el) => {
      const id = el.dataset.flashId;
      if (!announced.has(id)) {
        announced.add(id);
        sessionStorage.setItem("parley-announced", JSON.stringify([...announced]));
        beep();
      }
    });
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }
  function tick() {
    const now = Date.now();
    document.querySelectorAll("[data-deadline]").forEach((el) => {
      const left = Math.round((Date.parse(el.dataset.deadline) - now) / 1000);
      const row = el.closest("tr");
      if (left <= 0) {
        el.textContent = strings().overdue || "overdue";
        row?.classList.add("overdue");
      } else {
        const h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
        el.textContent = (h ? h + ":" + pad(m) : m) + ":" + pad(s);
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    renderSoundButton();
    document.querySelector("[data-sound-toggle]")?.addEventListener("click", () => {
      localStorage.setItem("parley-sound", soundEnabled() ? "off" : "on");
      renderSoundButton();
    });
    document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
      select.addEventListener("change", () => select.form.submit());
    });
    tick();
    setInterval(tick, 1000);
  });
  // The compose form checks itself as it is typed; the terminal shows the errors
  // of the inputs the operator has changed only (named in hidden _touched inputs),
  // not "required" under fields nobody has reached yet.
  function touch(event) {
    const input = event.target;
    const form = input.closest && input.closest("#compose-form");
    const touched = document.getElementById("compose-touched");
    if (!form || !touched || !input.name || input.name.startsWith("_") || input.name === "csrf_token") return;
    const known = [...touched.querySelectorAll("input")].some((t) => t.value === input.name);
    if (known) return;
    const mark = document.createElement("input");
    mark.type = "hidden";
    mark.name = "_touched";
    mark.value = input.name;
    touched.appendChild(mark);
  }
  document.addEventListener("input", touch, true);
  document.addEventListener("change", touch, true);

  document.addEventListener("htmx:afterSwap", (event) => {
    announceFlash(event.target);
    tick();
  });
})();
