// The VNC page: noVNC's RFB on /websockify?token=T of this same origin.  The
// server completes the VNC server's authentication and offers the browser
// security type None, so the page never asks for a password (a request for
// one is shown as an error, not a prompt).  The screen scales to the window.
// window.vncState is what the page went through (the tests read it).
import RFB from "/assets/@novnc/novnc/core/rfb.js";

const token = new URLSearchParams(location.search).get("token") || "";
const status = document.getElementById("status");
const state = { connects: 0, disconnects: 0, credentialsAsked: false, clean: null };
window.vncState = state;

const url = `wss://${location.host}/websockify?token=${encodeURIComponent(token)}`;
const rfb = new RFB(document.getElementById("screen"), url, { wsProtocols: ["binary"] });
rfb.scaleViewport = true;  // the guest's screen fits the window, both ways
rfb.resizeSession = false;  // the guest's resolution is the guest's
rfb.addEventListener("connect", () => {
  state.connects += 1;
  status.textContent = "";
});
rfb.addEventListener("disconnect", (e) => {
  state.disconnects += 1;
  state.clean = e.detail.clean;
  status.textContent = e.detail.clean
    ? "disconnected: reload the page (with a new link if it was single-use)"
    : "connection lost or refused: reload the page (with a new link if it was single-use)";
});
rfb.addEventListener("credentialsrequired", () => {
  // The server holds the password: this cannot be answered from here.
  state.credentialsAsked = true;
  status.textContent = "the VNC server asked for credentials (not expected)";
  rfb.disconnect();
});
rfb.addEventListener("desktopname", (e) => {
  document.title = `${e.detail.name} (VNC)`;
});
window.rfb = rfb;
