//! Whether this kernel (and this process's sandbox) lets us run the io_uring engine, and with
//! which ring set-up.
//!
//! Asked once at start-up, on a throw-away ring: `kernel.io_uring_disabled`, `io_uring_setup`
//! itself (a seccomp filter or an old kernel refuses it), then every feature and opcode the
//! engine relies on (kernel 5.19 or later: provided-buffer rings, poll-first receives, cancelling
//! by descriptor). The optional set-up flags (`SINGLE_ISSUER` with `DEFER_TASKRUN`, else
//! `COOP_TASKRUN`) are tried in turn and the first the kernel takes is kept.
//!
//! For tests only: `SWITCHYARD_TEST_URING_REFUSE=<reason>` makes the probe fail with that
//! reason, so the fallback of `engine = "auto"` and the refusal of `engine = "io_uring"` can be
//! exercised on a kernel that allows io_uring.

use io_uring::{opcode, IoUring, Probe};
use std::io;

/// The test-only switch that makes the probe fail.
pub const REFUSE_ENV: &str = "SWITCHYARD_TEST_URING_REFUSE";

/// How the rings of this process are set up (what the probe found the kernel takes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// `IORING_SETUP_SQPOLL`: a kernel thread polls the submission queue.
    pub sqpoll: bool,
    /// `SINGLE_ISSUER | DEFER_TASKRUN`: completions run only inside our `io_uring_enter`.
    pub defer_taskrun: bool,
    /// `COOP_TASKRUN` (when `DEFER_TASKRUN` is not available): no interrupts for completions.
    pub coop_taskrun: bool,
    /// `SINGLE_ISSUER` without `DEFER_TASKRUN` (with SQPOLL).
    pub single_issuer: bool,
}

impl Setup {
    /// The flags in words, for the start line.
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        if self.sqpoll {
            v.push("sqpoll");
        }
        if self.defer_taskrun {
            v.push("single_issuer+defer_taskrun");
        } else if self.single_issuer {
            v.push("single_issuer");
        }
        if self.coop_taskrun {
            v.push("coop_taskrun");
        }
        if v.is_empty() {
            "plain".to_string()
        } else {
            v.join(",")
        }
    }
}

/// A ring builder with `setup`'s flags (`entries` submission entries, `cq` completion ones).
pub(super) fn build(setup: &Setup, entries: u32, cq: u32) -> io::Result<IoUring> {
    let mut b = IoUring::builder();
    b.setup_cqsize(cq);
    b.setup_clamp();
    if setup.sqpoll {
        b.setup_sqpoll(1000);
    }
    if setup.single_issuer || setup.defer_taskrun {
        b.setup_single_issuer();
        // Created on the main thread, used by the worker: the worker enables it (and so
        // becomes its single issuer) at its first poll.
        b.setup_r_disabled();
    }
    if setup.defer_taskrun {
        b.setup_defer_taskrun();
    }
    if setup.coop_taskrun {
        b.setup_coop_taskrun();
    }
    b.build(entries)
}

/// Checks that io_uring can run here; `Err` says why not, in one line.
pub fn probe(sqpoll: bool) -> Result<Setup, String> {
    if let Some(why) = std::env::var_os(REFUSE_ENV).filter(|v| !v.is_empty()) {
        return Err(format!(
            "refused for testing ({REFUSE_ENV}={})",
            why.to_string_lossy()
        ));
    }
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if s.trim() == "2" {
            return Err("kernel.io_uring_disabled = 2: io_uring is disabled on this host".into());
        }
    }
    // The preferred set-up first; an older kernel answers EINVAL for flags it does not know.
    let candidates: &[Setup] = if sqpoll {
        &[
            Setup {
                sqpoll: true,
                defer_taskrun: false,
                coop_taskrun: false,
                single_issuer: true,
            },
            Setup {
                sqpoll: true,
                defer_taskrun: false,
                coop_taskrun: false,
                single_issuer: false,
            },
        ]
    } else {
        &[
            Setup {
                sqpoll: false,
                defer_taskrun: true,
                coop_taskrun: false,
                single_issuer: true,
            },
            Setup {
                sqpoll: false,
                defer_taskrun: false,
                coop_taskrun: true,
                single_issuer: false,
            },
            Setup {
                sqpoll: false,
                defer_taskrun: false,
                coop_taskrun: false,
                single_issuer: false,
            },
        ]
    };
    let mut last = None;
    for setup in candidates {
        match build(setup, 8, 16) {
            Ok(ring) => return check(ring, *setup),
            Err(e) => last = Some(e),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL));
    Err(match e.raw_os_error() {
        Some(libc::ENOSYS) => {
            "io_uring_setup: not implemented (a kernel without io_uring, or a seccomp filter)"
                .to_string()
        }
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            "io_uring_setup: {e} (kernel.io_uring_disabled = 1 and this process is not \
             allowed, or a seccomp filter refuses io_uring)"
        ),
        _ => format!("io_uring_setup: {e}"),
    })
}

/// What the engine needs from a ring the kernel accepted.
fn check(ring: IoUring, setup: Setup) -> Result<Setup, String> {
    let old =
        |what: &str| format!("kernel too old for the io_uring engine: no {what} (needs 5.19)");
    let p = ring.params();
    if !p.is_feature_nodrop() {
        return Err(old("IORING_FEAT_NODROP"));
    }
    if !p.is_feature_ext_arg() {
        return Err(old("IORING_FEAT_EXT_ARG"));
    }
    if !p.is_feature_fast_poll() {
        return Err(old("IORING_FEAT_FAST_POLL"));
    }
    if !p.is_feature_skip_cqe_on_success() {
        return Err(old("IORING_FEAT_CQE_SKIP"));
    }
    let sub = ring.submitter();
    if setup.single_issuer || setup.defer_taskrun {
        sub.register_enable_rings()
            .map_err(|e| format!("io_uring: enabling a ring: {e}"))?;
    }
    let mut probe = Probe::new();
    sub.register_probe(&mut probe)
        .map_err(|e| format!("io_uring: probing opcodes: {e}"))?;
    for (code, name) in [
        (opcode::Accept::CODE, "ACCEPT"),
        (opcode::Recv::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::Connect::CODE, "CONNECT"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::Close::CODE, "CLOSE"),
        (opcode::Shutdown::CODE, "SHUTDOWN"),
        (opcode::Read::CODE, "READ"),
    ] {
        if !probe.is_supported(code) {
            return Err(old(&format!("IORING_OP_{name}")));
        }
    }
    // Provided-buffer rings (5.19) are what idle connections' receives wait on.
    super::bufring::BufRing::probe(&ring).map_err(|e| old(&format!("buffer ring ({e})")))?;
    Ok(setup)
}
