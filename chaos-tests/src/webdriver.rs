//! A small W3C WebDriver client for the console's browser tests: Debian's `chromium`, headless,
//! driven by its `chromedriver` over plain HTTP on loopback. Only what the tests use: open a
//! page, find by CSS, click, type, read text, wait for a condition, resize, screenshot.
//!
//! The browser accepts the cluster's certificates (`acceptInsecureCerts`): the test cluster's
//! CA is made per run and Chromium reads trust anchors only from an NSS database. Pages are
//! still HTTPS, so Secure cookies and the CSP behave as in production.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Debian puts them (`apt-get install chromium chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

#[derive(Debug)]
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Killed, chromedriver leaves its browser running (a CI run left Chromium behind):
        // kill the process group it leads, which its Chromium processes inherited.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Start chromedriver and a headless Chromium window of `width` x `height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> anyhow::Result<Self> {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            anyhow::ensure!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: scripts/setup.sh installs chromium and chromium-driver"
            );
        }
        let port = crate::free_port()?;
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            // Its own process group, so that Drop can end it and every browser process.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start chromedriver")?;
        let mut b = Self {
            driver,
            port,
            session: String::new(),
        };
        // Wait until it answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if b.http("GET", "/status", None).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not answer on port {port} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                // No crash reporter: its handler leaves the process group and would outlive
                // the test.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run",
                         "--disable-crash-reporter", "--disable-breakpad",
                         format!("--window-size={width},{height}")]
            }
        }}});
        let v = b.http("POST", "/session", Some(caps)).await?;
        b.session = v["sessionId"]
            .as_str()
            .context("no sessionId from chromedriver")?
            .to_owned();
        b.resize(width, height).await?;
        Ok(b)
    }

    /// One WebDriver command; its `value`, or the WebDriver error as an error.
    async fn http(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let work = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                self.port,
                body.len()
            );
            s.write_all(req.as_bytes()).await?;
            // chromedriver keeps the connection open: read the head, then exactly the body.
            let mut out = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
                if complete(&out) {
                    break;
                }
            }
            Ok::<_, anyhow::Error>(out)
        };
        let raw = tokio::time::timeout(Duration::from_secs(60), work)
            .await
            .map_err(|_| anyhow!("WebDriver {method} {path}: no answer within 60 s"))??;
        let text = String::from_utf8_lossy(&raw);
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("WebDriver: no HTTP head"))?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)?
        } else {
            rest.to_owned()
        };
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("WebDriver {method} {path}: not JSON: {body}"))?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if let Some(err) = value.get("error").and_then(Value::as_str) {
            bail!(
                "WebDriver {method} {path}: {err}: {}",
                value["message"].as_str().unwrap_or("")
            );
        }
        Ok(value)
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.http(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    pub async fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await?;
        Ok(())
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .await?;
        Ok(())
    }

    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .cmd("GET", "/url", None)
            .await?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    /// The page's HTML as the browser holds it now.
    pub async fn source(&self) -> anyhow::Result<String> {
        Ok(self
            .cmd("GET", "/source", None)
            .await?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    async fn find(&self, css: &str) -> anyhow::Result<String> {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .with_context(|| format!("find {css:?}"))?;
        Ok(v[ELEMENT]
            .as_str()
            .with_context(|| format!("no element id in {v}"))?
            .to_owned())
    }

    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let id = self.find(css).await?;
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})))
            .await?;
        Ok(())
    }

    /// Clear the field and type `text` into it.
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let id = self.find(css).await?;
        self.cmd("POST", &format!("/element/{id}/clear"), Some(json!({})))
            .await?;
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await?;
        Ok(())
    }

    /// Choose the `<option>` with this value in a `<select>`.
    pub async fn select(&self, select_css: &str, value: &str) -> anyhow::Result<()> {
        self.click(&format!("{select_css} option[value=\"{value}\"]"))
            .await
    }

    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let id = self.find(css).await?;
        Ok(self
            .cmd("GET", &format!("/element/{id}/text"), None)
            .await?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    /// Wait until the element's text contains `want`, at most `timeout`.
    pub async fn wait_text(&self, css: &str, want: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(t) = self.text(css).await {
                if t.contains(want) {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!("{css}: text {t:?} never contained {want:?} within {timeout:?}");
                }
            } else if Instant::now() > deadline {
                bail!("{css}: no such element within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the whole viewport, written to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let v = self.cmd("GET", "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("screenshot data")?)
            .context("screenshot base64")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }
}

/// Whether `raw` holds a whole HTTP response (by Content-Length, or a chunked body's end).
fn complete(raw: &[u8]) -> bool {
    let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..at]).to_ascii_lowercase();
    let body = &raw[at + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

fn dechunk(s: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = s;
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| anyhow!("bad chunked body"))?;
        let n = usize::from_str_radix(size.trim(), 16).context("chunk size")?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..n).ok_or_else(|| anyhow!("short chunk"))?);
        rest = after.get(n + 2..).unwrap_or("");
    }
}
