// The serial console page: xterm.js on /websockify?token=T (docs/protocol.rst,
// "Browsers").  The first message is {"offset", "lost"}; each binary message
// continues the bytes before it, so after a drop the page reconnects from the
// offset just past its last byte and shows nothing twice, nothing lost.
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const token = params.get("token") || "";
  const status = document.getElementById("status");
  const term = new Terminal({ convertEol: false, scrollback: 10000 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  window.addEventListener("resize", () => fit.fit());
  const encoder = new TextEncoder();
  let next = null; // the offset just past the last byte shown
  let socket = null;
  let delay = 500;
  let guestDown = false; // the last socket ended with "down"
  const HISTORY = 64 * 1024; // bytes of recent output a fresh page shows
  // What the page has shown, for tests: offsets first..next, bytes written.
  const state = { first: null, next: null, bytes: 0, connects: 0, lost: 0 };
  window.consoleState = state;

  function say(text) { status.textContent = text; }

  function connect() {
    const query = new URLSearchParams({ token: token });
    // First the recent history, then on from the last byte shown.
    if (next !== null) query.set("offset", String(next));
    else query.set("tail", String(HISTORY));
    const url = `wss://${location.host}/websockify?${query}`;
    socket = new WebSocket(url, ["binary"]);
    socket.binaryType = "arraybuffer";
    let hello = false;
    socket.onmessage = (event) => {
      if (!hello) {
        hello = true;
        const start = JSON.parse(event.data);
        if (start.lost > 0) {
          state.lost += start.lost;
          say(`${start.lost} bytes of output were lost before offset ${start.offset}`);
        } else if (!guestDown) {
          say(""); // connected again
        }
        if (!guestDown) delay = 500;
        next = start.offset;
        if (state.first === null) state.first = next;
        state.next = next;
        state.connects += 1;
        return;
      }
      const data = new Uint8Array(event.data);
      if (guestDown) { guestDown = false; delay = 500; say(""); } // it is back
      next += data.length;
      state.next = next;
      state.bytes += data.length;
      term.write(data);
    };
    socket.onclose = (event) => {
      if (event.reason === "destroyed") { say("the console was destroyed"); return; }
      guestDown = event.reason === "down";
      if (guestDown) say("the guest is down; reconnecting");
      else say("disconnected; reconnecting");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }

  term.onData((text) => {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(encoder.encode(text));
    }
  });
  connect();
})();
