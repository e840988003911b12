//! Frees large replaced values (a state of 10,000 policies, an old view) on a background
//! thread: freeing them takes milliseconds the node owner should spend on CNI requests.
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};

type Garbage = Box<dyn Send>;

static REAPER: OnceLock<Mutex<Sender<Garbage>>> = OnceLock::new();

/// Drops `value` on the reaper thread (here, if that thread cannot be started).
pub fn later<T: Send + 'static>(value: T) {
    let tx = REAPER.get_or_init(|| {
        let (tx, rx) = channel::<Garbage>();
        let started = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || for _garbage in rx {});
        if let Err(e) = started {
            tracing::warn!("no reaper thread ({e}); replaced values are freed in place");
        }
        Mutex::new(tx)
    });
    let tx = tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    // When the thread is gone, the value comes back in the error and is dropped here.
    let _ = tx.send(Box::new(value));
}
