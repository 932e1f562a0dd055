//! Running an autoscale action, on its own thread (never on the autoscaler's, the control
//! plane's or a worker's): a hook program with the event as environment variables and JSON on
//! stdin, or a webhook `POST` of the same JSON. Either gets [`ACTION_TIMEOUT`]; a hook that
//! runs longer is killed with its whole process group.

use crate::config::autoscale::{defaults::ACTION_TIMEOUT, Action, WebhookUrl};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How an action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Exit status other than 0, a signal, a non-2xx answer, or it could not be started.
    Failed(String),
    /// Killed (hook) or abandoned (webhook) after [`ACTION_TIMEOUT`].
    TimedOut,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed(_) => "failed",
            Outcome::TimedOut => "timeout",
        }
    }
}

/// Runs `action` to its end (blocking: call it on a thread of its own).
pub fn run(action: &Action, env: &[(String, String)], event: &[u8]) -> Outcome {
    match action {
        Action::Hook(argv) => run_hook(argv, env, event, ACTION_TIMEOUT),
        Action::Webhook(url) => post(url, event, ACTION_TIMEOUT),
    }
}

/// How often a running hook is looked at.
const POLL: Duration = Duration::from_millis(20);

pub fn run_hook(
    argv: &[String],
    env: &[(String, String)],
    event: &[u8],
    timeout: Duration,
) -> Outcome {
    let Some((prog, args)) = argv.split_first() else {
        return Outcome::Failed("empty hook".into());
    };
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        // stdout is the stats dump's: the hook's output goes to the log (stderr) instead.
        .stdout(Stdio::from(io::stderr()))
        .stderr(Stdio::inherit())
        // Its own process group, so a hung hook is killed with everything it started.
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("cannot start {prog}: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let event = event.to_vec();
        // A hook that does not read its stdin must not block us: write from a side thread,
        // which ends with EPIPE when the hook exits.
        let _ = std::thread::Builder::new()
            .name("autoscale-stdin".into())
            .spawn(move || {
                let _ = stdin.write_all(&event);
            });
    }
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Outcome::Ok,
            Ok(Some(status)) => return Outcome::Failed(format!("hook {prog} ended with {status}")),
            Ok(None) => {}
            Err(e) => return Outcome::Failed(format!("waiting for hook {prog}: {e}")),
        }
        if Instant::now() >= deadline {
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
            return Outcome::TimedOut;
        }
        std::thread::sleep(POLL);
    }
}

/// `POST url` with the JSON body; a 2xx status is success. The whole exchange is bounded by
/// `timeout`.
pub fn post(url: &WebhookUrl, body: &[u8], timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    match exchange(url, body, deadline) {
        Ok(status) if (200..300).contains(&status) => Outcome::Ok,
        Ok(status) => Outcome::Failed(format!("webhook {} answered {status}", url.url)),
        Err(e) if Instant::now() >= deadline || is_timeout(&e) => Outcome::TimedOut,
        Err(e) => Outcome::Failed(format!("webhook {}: {e}", url.url)),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

fn left(deadline: Instant) -> io::Result<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
    }
    Ok(d)
}

fn exchange(url: &WebhookUrl, body: &[u8], deadline: Instant) -> io::Result<u16> {
    let addr = url
        .authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{} resolves to nothing", url.authority)))?;
    let mut s = TcpStream::connect_timeout(&addr, left(deadline)?)?;
    s.set_write_timeout(Some(left(deadline)?))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: switchyard-autoscale\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.path,
        url.host,
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    // The status line is all we need; read until it is complete.
    let mut got = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    loop {
        s.set_read_timeout(Some(left(deadline)?))?;
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::other("connection closed before a status line"));
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&got[..end]);
            let mut parts = line.split_whitespace();
            return match (parts.next(), parts.next().and_then(|c| c.parse().ok())) {
                (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
                _ => Err(io::Error::other(format!("bad status line {line:?}"))),
            };
        }
        if got.len() > 4096 {
            return Err(io::Error::other("no status line in the first 4 KiB"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn hooks_exit_fail_and_time_out() {
        let sh = |s: &str| vec!["/bin/sh".to_string(), "-c".to_string(), s.to_string()];
        let env = [("SWITCHYARD_ACTION".to_string(), "scale_up".to_string())];
        // The hook sees its environment and its stdin.
        let ok = run_hook(
            &sh("test \"$SWITCHYARD_ACTION\" = scale_up && grep -q '\"x\"'"),
            &env,
            b"{\"x\":1}",
            Duration::from_secs(5),
        );
        assert_eq!(ok, Outcome::Ok);
        let failed = run_hook(&sh("exit 3"), &env, b"{}", Duration::from_secs(5));
        assert!(
            matches!(failed, Outcome::Failed(ref m) if m.contains('3')),
            "{failed:?}"
        );
        let missing = run_hook(
            &["/nonexistent/hook".to_string()],
            &env,
            b"{}",
            Duration::from_secs(5),
        );
        assert!(matches!(missing, Outcome::Failed(_)));
        let t0 = Instant::now();
        let hung = run_hook(&sh("sleep 30"), &env, b"{}", Duration::from_millis(300));
        assert_eq!(hung, Outcome::TimedOut);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn webhook_status_decides() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (i, s) in l.incoming().take(2).enumerate() {
                let mut s = s.unwrap();
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !String::from_utf8_lossy(&got).contains("\"n\":1}") {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                seen.push(String::from_utf8_lossy(&got).into_owned());
                let status = if i == 0 { "204 No Content" } else { "500 Oops" };
                let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            }
            seen
        });
        let url = WebhookUrl::parse(&format!("http://127.0.0.1:{port}/scale")).unwrap();
        assert_eq!(
            post(&url, b"{\"n\":1}", Duration::from_secs(5)),
            Outcome::Ok
        );
        assert!(matches!(
            post(&url, b"{\"n\":1}", Duration::from_secs(5)),
            Outcome::Failed(_)
        ));
        let seen = server.join().unwrap();
        assert!(
            seen[0].starts_with("POST /scale HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        assert!(seen[0].contains("Content-Type: application/json"));
    }
}
