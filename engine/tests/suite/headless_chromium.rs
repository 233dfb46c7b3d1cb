//! A real headless Chromium (Debian's `chromium`, installed by `scripts/tools.sh`) driven over
//! the Chrome DevTools Protocol: started on a profile of its own with its debugging port bound
//! by itself (port 0, the address read from its `DevTools listening on` line), one page
//! attached over one WebSocket (flat sessions). The page is navigated, read with
//! `Runtime.evaluate`, clicked with real mouse events (so a form is sent as a user's click
//! sends it, with the browser's own `Origin` and `Sec-Fetch-Site`), and photographed. Every
//! call has a deadline; the browser is killed when dropped. Used by `ui`.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest one protocol call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A running headless Chromium with one page.
pub struct Chromium {
    _child: Child,
    _profile: tempfile::TempDir,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next: u64,
}

/// The `chromium` command, or a test failure that says how to install it.
fn chromium_binary() -> String {
    let bin = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let found = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{bin} is not installed: run scripts/tools.sh (Debian package `chromium`), or set CHROMIUM"
    );
    bin
}

impl Chromium {
    /// Starts the browser and attaches to a blank page; fails the test when it has not said
    /// where it listens within `deadline`.
    pub async fn start(deadline: Duration) -> Chromium {
        let profile = tempfile::tempdir().expect("a browser profile");
        let mut child = Command::new(chromium_binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,1600",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().expect("chromium's stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut said = String::new();
        let url = tokio::time::timeout(deadline, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(at) = line.find("ws://") {
                    return Some(line[at..].trim().to_owned());
                }
                said.push_str(&line);
                said.push('\n');
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("chromium did not say where it listens:\n{said}"));
        // Its stderr is read to the end, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws, _) = tokio::time::timeout(CALL_TIMEOUT, tokio_tungstenite::connect_async(&url))
            .await
            .expect("the DevTools socket opens in time")
            .expect("the DevTools socket opens");
        let mut browser = Chromium {
            _child: child,
            _profile: profile,
            ws,
            session: String::new(),
            next: 0,
        };
        let target = browser
            .send(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().expect("a target").to_owned();
        let attached = browser
            .send(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session")
            .to_owned();
        browser
    }

    /// One protocol call (to the page's session, or to the browser), its result; a protocol
    /// error is `Err`.
    async fn try_send(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let ws = &mut self.ws;
        tokio::time::timeout(CALL_TIMEOUT, async move {
            ws.send(Message::text(msg.to_string()))
                .await
                .expect("a DevTools message is sent");
            loop {
                let got = ws
                    .next()
                    .await
                    .expect("the DevTools socket stays open")
                    .expect("a DevTools message");
                let Ok(text) = got.to_text() else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                if v["id"] == id {
                    return match v.get("error") {
                        Some(e) => Err(e.clone()),
                        None => Ok(v["result"].clone()),
                    };
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method} answered within {CALL_TIMEOUT:?}"))
    }

    async fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_send(session, method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// A call to the page.
    pub async fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(Some(&session), method, params).await
    }

    /// Sends these headers with every request of the page (as a gateway in front of the
    /// engine adds a token).
    pub async fn extra_headers(&mut self, headers: Value) {
        self.page("Network.enable", json!({})).await;
        self.page("Network.setExtraHTTPHeaders", json!({"headers": headers}))
            .await;
    }

    pub async fn navigate(&mut self, url: &str) {
        // The document being left is marked, so that what follows (a wait for an element, a
        // click) sees the new document only, loaded with its style sheet, and not the old
        // one, which may hold the same elements until the new one replaces it.
        let _ = self.eval("window.__leaving = true").await;
        let got = self.page("Page.navigate", json!({"url": url})).await;
        assert!(got.get("errorText").is_none(), "{url}: {got}");
        self.wait_for(
            "window.__leaving === undefined && document.readyState === 'complete'",
            Duration::from_secs(20),
            &format!("{url} loaded"),
        )
        .await;
    }

    /// The value of a JavaScript expression in the page, or `Err` while the page is between
    /// two documents.
    pub async fn eval(&mut self, expression: &str) -> Result<Value, Value> {
        let session = self.session.clone();
        let got = self
            .try_send(
                Some(&session),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await?;
        match got.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(got["result"]["value"].clone()),
        }
    }

    /// Polls `condition` (a JavaScript expression) until it is `true`; fails the test after
    /// `deadline`, with the page's text.
    pub async fn wait_for(&mut self, condition: &str, deadline: Duration, what: &str) {
        let end = Instant::now() + deadline;
        loop {
            if self.eval(condition).await == Ok(Value::Bool(true)) {
                return;
            }
            if Instant::now() > end {
                let text = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!("{what}: not within {deadline:?}; the page says: {text:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the middle of the element `selector` with the mouse.
    pub async fn click(&mut self, selector: &str) {
        let js = format!(
            "(() => {{ const e = document.querySelector({}); e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
            json!(selector)
        );
        let at = self
            .eval(&js)
            .await
            .unwrap_or_else(|e| panic!("{selector} is on the page: {e}"));
        let (x, y) = (at[0].as_f64().expect("x"), at[1].as_f64().expect("y"));
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.page(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// A PNG of the whole page, written to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let got = self
            .page(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(got["data"].as_str().expect("PNG data"))
            .expect("base64");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the artefact directory");
        }
        std::fs::write(path, png).expect("the screenshot is written");
    }
}
