//! The threads that run catalog edits: fewer than the cores, and at a lower
//! CPU priority than request serving (nice +10 on Linux), so that a stream of
//! upserts takes the cores recommendations leave idle rather than half of
//! them. Compactions lower their own thread's priority the same way.

use parking_lot::Mutex;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

/// The edit threads and the queue that feeds them.
pub(super) struct EditPool {
    tx: Mutex<Option<Sender<EditJob>>>,
}

pub(super) type EditJob = Box<dyn FnOnce() + Send>;

/// Threads of the edit pool.
const EDIT_THREADS: usize = 2;
/// Nice value of edit threads (0 = normal; 19 = lowest).
const EDIT_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority (Linux: nice is per thread).
pub(super) fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority have no memory effects; a failure
    // (e.g. no permission) only leaves the priority as it was.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, EDIT_NICE);
    }
}

impl EditPool {
    pub(super) fn start() -> std::io::Result<Self> {
        let (tx, rx) = channel::<EditJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..EDIT_THREADS {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("genrec-edit-{i}")).spawn(move || {
                lower_priority();
                loop {
                    let job = rx.lock().recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            })?;
        }
        Ok(EditPool { tx: Mutex::new(Some(tx)) })
    }

    /// Queues a job; false once the pool is stopped.
    pub(super) fn send(&self, job: EditJob) -> bool {
        self.tx.lock().as_ref().is_some_and(|s| s.send(job).is_ok())
    }
}

impl Drop for EditPool {
    fn drop(&mut self) {
        self.tx.lock().take();
    }
}
