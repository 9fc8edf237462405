//! Locking a port's mutexes whatever a panicking holder left: the data behind them
//! (buffers, counters, a queue's state) is valid at any point, nothing on the data path
//! panics, and a panic elsewhere is reported by its thread's join.

use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

/// Locks `mutex`, taking its content even if a thread panicked holding it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// [`lock`] if no other thread holds `mutex` now; `None` if one does.
pub fn try_lock<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_mutex_still_locks_and_a_held_one_is_not_taken() {
        let mutex = Mutex::new(1);
        let _ = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _guard = mutex.lock();
                    panic!("poison it");
                })
                .join()
        });
        assert!(mutex.is_poisoned());
        *lock(&mutex) += 1;
        assert_eq!(try_lock(&mutex).map(|g| *g), Some(2));
        let held = lock(&mutex);
        assert!(try_lock(&mutex).is_none(), "held by this thread");
        drop(held);
    }
}
