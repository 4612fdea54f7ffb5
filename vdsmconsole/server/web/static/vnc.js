// The VNC page: noVNC's RFB on /websockify?token=T.  The server completes the
// VNC server's authentication and offers the browser security type None.
import RFB from "/assets/@novnc/novnc/core/rfb.js";

const token = new URLSearchParams(location.search).get("token") || "";
const status = document.getElementById("status");
const url = `wss://${location.host}/websockify?token=${encodeURIComponent(token)}`;
const rfb = new RFB(document.getElementById("screen"), url, { wsProtocols: ["binary"] });
rfb.scaleViewport = true;
rfb.addEventListener("connect", () => { status.textContent = ""; });
rfb.addEventListener("disconnect", (e) => {
  status.textContent = e.detail.clean ? "disconnected" : "connection lost";
});
window.rfb = rfb;
