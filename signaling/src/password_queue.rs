//! Argon2 checks of room passwords on a few threads of their own, behind a bounded queue.
//!
//! A check costs tens of milliseconds and about 19 MiB, so how many run and how many
//! wait is what bounds the gateway's CPU and memory under a guessing attack:
//! * a fixed set of worker threads (not the blocking pool, whose threads would each keep
//!   their own 19 MiB malloc arena) runs the checks;
//! * each address has at most one check queued or running;
//! * the queue holds at most [`FIRST_TRY_QUEUE`] first tries and [`REPEAT_QUEUE`] repeat
//!   tries (from addresses that gave a wrong password lately); past that a join is refused
//!   as busy at once instead of waiting behind an attacker;
//! * first tries are served before repeat tries, so someone typing the password of their
//!   lesson once is not queued behind addresses that keep guessing.

use crate::guesses::Guesser;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

/// First tries waiting at most (about a second of work on two cores): an attacker has one
/// first try per address, so filling this takes many addresses at once.
pub const FIRST_TRY_QUEUE: usize = 64;
/// Repeat tries waiting at most.
pub const REPEAT_QUEUE: usize = 16;
/// Most worker threads, whatever the number of cores (each holds 19 MiB while it works).
pub const MAX_WORKERS: usize = 4;

/// The outcome of checking a join's password against the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    /// The room has no password.
    NotNeeded,
    /// The room has one and the join gave none.
    Missing,
    /// The password matched the room's hash.
    Matched,
    /// It did not.
    Wrong,
    /// Not checked: the queue is full, or this address already has a check queued.
    Busy,
}

/// Where a check waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// The address gave no wrong password lately.
    FirstTry,
    /// The address is guessing.
    Repeat,
}

/// Makes, for each worker thread, what decides whether a password matches a PHC hash
/// (argon2 with scratch memory of its own, in production).
pub type Verifier = Arc<dyn Fn() -> Box<dyn FnMut(&str, &str) -> bool + Send> + Send + Sync>;

struct Job {
    hash: String,
    password: String,
    reply: tokio::sync::oneshot::Sender<bool>,
}

#[derive(Default)]
struct Queues {
    first: VecDeque<Job>,
    repeat: VecDeque<Job>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
    queued_by: Mutex<HashSet<Guesser>>,
}

/// Stops the workers when the last checker is dropped.
struct Pool {
    shared: Arc<Shared>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Ok(mut queues) = self.shared.queues.lock() {
            queues.closed = true;
        }
        self.shared.ready.notify_all();
    }
}

/// The gateway's password checker (cheap to clone).
#[derive(Clone)]
pub struct PasswordChecker {
    pool: Arc<Pool>,
}

impl PasswordChecker {
    /// Argon2 on `workers` threads (at most [`MAX_WORKERS`]).
    pub fn new(workers: usize) -> Self {
        Self::with_verifier(
            workers,
            Arc::new(|| {
                let mut verifier = tutti_store::password::Verifier::new();
                Box::new(move |hash: &str, password: &str| verifier.verify(hash, password))
            }),
        )
    }

    /// Checks with `verify` on `workers` threads (at most [`MAX_WORKERS`]).
    pub fn with_verifier(workers: usize, verify: Verifier) -> Self {
        let shared = Arc::new(Shared::default());
        for index in 0..workers.clamp(1, MAX_WORKERS) {
            let shared = shared.clone();
            let mut verify = verify();
            let spawned = std::thread::Builder::new()
                .name(format!("password-{index}"))
                .spawn(move || work(&shared, &mut *verify));
            if let Err(err) = spawned {
                tracing::error!(error = %err, "cannot start a password-check thread");
            }
        }
        Self {
            pool: Arc::new(Pool { shared }),
        }
    }

    /// Checks a join's password against the room's hash, for a client at `who`.
    pub async fn check(
        &self,
        who: Guesser,
        priority: Priority,
        hash: Option<&str>,
        password: Option<&str>,
    ) -> PasswordCheck {
        let Some(hash) = hash else {
            return PasswordCheck::NotNeeded;
        };
        let Some(password) = password else {
            return PasswordCheck::Missing;
        };
        let shared = &self.pool.shared;
        let Some(_queued) = QueuedFor::claim(shared, who) else {
            return PasswordCheck::Busy;
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        {
            let Ok(mut queues) = shared.queues.lock() else {
                return PasswordCheck::Busy;
            };
            let (queue, bound) = match priority {
                Priority::FirstTry => (&mut queues.first, FIRST_TRY_QUEUE),
                Priority::Repeat => (&mut queues.repeat, REPEAT_QUEUE),
            };
            if queue.len() >= bound {
                return PasswordCheck::Busy;
            }
            queue.push_back(Job {
                hash: hash.to_owned(),
                password: password.to_owned(),
                reply,
            });
        }
        shared.ready.notify_one();
        match answer.await {
            Ok(true) => PasswordCheck::Matched,
            Ok(false) => PasswordCheck::Wrong,
            Err(_) => PasswordCheck::Busy,
        }
    }

    /// Checks waiting (not yet running).
    pub fn waiting(&self) -> usize {
        self.pool
            .shared
            .queues
            .lock()
            .map_or(0, |q| q.first.len() + q.repeat.len())
    }
}

/// An address's one place in the queue, given back when its check ends or is abandoned.
struct QueuedFor<'a> {
    shared: &'a Shared,
    who: Guesser,
}

impl<'a> QueuedFor<'a> {
    fn claim(shared: &'a Shared, who: Guesser) -> Option<Self> {
        let mut queued = shared.queued_by.lock().ok()?;
        queued.insert(who).then(|| Self { shared, who })
    }
}

impl Drop for QueuedFor<'_> {
    fn drop(&mut self) {
        if let Ok(mut queued) = self.shared.queued_by.lock() {
            queued.remove(&self.who);
        }
    }
}

fn work(shared: &Shared, verify: &mut (dyn FnMut(&str, &str) -> bool + Send)) {
    loop {
        let job = {
            let Ok(mut queues) = shared.queues.lock() else {
                return;
            };
            loop {
                if queues.closed {
                    return;
                }
                if let Some(job) = queues
                    .first
                    .pop_front()
                    .or_else(|| queues.repeat.pop_front())
                {
                    break job;
                }
                queues = match shared.ready.wait(queues) {
                    Ok(queues) => queues,
                    Err(_) => return,
                };
            }
        };
        // A client that went away while waiting costs nothing.
        if job.reply.is_closed() {
            continue;
        }
        let matched = verify(&job.hash, &job.password);
        let _ = job.reply.send(matched);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::mpsc;

    fn guesser(last: u8) -> Guesser {
        Guesser::of(IpAddr::V4(Ipv4Addr::new(198, 51, 100, last)))
    }

    /// A verifier that answers only when the test lets it, and logs what it checked.
    struct Gate {
        release: mpsc::Sender<()>,
        checked: mpsc::Receiver<String>,
    }

    fn gated(workers: usize) -> (PasswordChecker, Gate) {
        let (release, released) = mpsc::channel::<()>();
        let (log, checked) = mpsc::channel();
        let released = Arc::new(Mutex::new(released));
        let checker = PasswordChecker::with_verifier(
            workers,
            Arc::new(move || {
                let (log, released) = (log.clone(), released.clone());
                Box::new(move |_hash: &str, password: &str| {
                    let _ = log.send(password.to_owned());
                    let _ = released.lock().map(|r| r.recv());
                    password == "right"
                })
            }),
        );
        (checker, Gate { release, checked })
    }

    fn spawn_check(
        checker: &PasswordChecker,
        who: Guesser,
        priority: Priority,
        password: &'static str,
    ) -> tokio::task::JoinHandle<PasswordCheck> {
        let checker = checker.clone();
        tokio::spawn(async move {
            checker
                .check(who, priority, Some("hash"), Some(password))
                .await
        })
    }

    /// Lets spawned checks run until `done` holds.
    async fn until(mut done: impl FnMut() -> bool) {
        while !done() {
            tokio::task::yield_now().await;
        }
    }

    /// The password the verifier takes up next.
    async fn next_checked(gate: &Gate) -> String {
        loop {
            if let Ok(password) = gate.checked.try_recv() {
                return password;
            }
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn argon2_answers_match_wrong_missing_and_not_needed() {
        let hash = tutti_store::password::hash_password("adagio").unwrap();
        let checker = PasswordChecker::new(2);
        let who = guesser(1);
        let first = Priority::FirstTry;
        assert_eq!(
            checker.check(who, first, None, None).await,
            PasswordCheck::NotNeeded
        );
        assert_eq!(
            checker.check(who, first, Some(&hash), None).await,
            PasswordCheck::Missing
        );
        assert_eq!(
            checker.check(who, first, Some(&hash), Some("adagio")).await,
            PasswordCheck::Matched
        );
        assert_eq!(
            checker.check(who, first, Some(&hash), Some("presto")).await,
            PasswordCheck::Wrong
        );
    }

    #[tokio::test]
    async fn one_address_has_one_check_at_a_time() {
        let (checker, gate) = gated(1);
        let running = spawn_check(&checker, guesser(1), Priority::FirstTry, "right");
        assert_eq!(next_checked(&gate).await, "right");
        assert_eq!(
            checker
                .check(guesser(1), Priority::FirstTry, Some("hash"), Some("again"))
                .await,
            PasswordCheck::Busy
        );
        gate.release.send(()).unwrap();
        assert_eq!(running.await.unwrap(), PasswordCheck::Matched);
        // Its check done, the address may try again.
        let again = spawn_check(&checker, guesser(1), Priority::Repeat, "wrong");
        assert_eq!(next_checked(&gate).await, "wrong");
        gate.release.send(()).unwrap();
        assert_eq!(again.await.unwrap(), PasswordCheck::Wrong);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_first_tries_go_before_guessers() {
        let (checker, gate) = gated(1);
        // The worker is busy with one check; the queues fill behind it.
        let busy = spawn_check(&checker, guesser(0), Priority::Repeat, "r0");
        assert_eq!(next_checked(&gate).await, "r0");
        let waiting: Vec<_> = (1..=REPEAT_QUEUE as u8)
            .map(|i| spawn_check(&checker, guesser(i), Priority::Repeat, "guess"))
            .collect();
        until(|| checker.waiting() == REPEAT_QUEUE).await;
        assert_eq!(
            checker
                .check(
                    guesser(200),
                    Priority::Repeat,
                    Some("hash"),
                    Some("one more")
                )
                .await,
            PasswordCheck::Busy,
            "a full repeat queue refuses"
        );
        let honest = spawn_check(&checker, guesser(201), Priority::FirstTry, "right");
        until(|| checker.waiting() == REPEAT_QUEUE + 1).await;
        gate.release.send(()).unwrap();
        assert_eq!(busy.await.unwrap(), PasswordCheck::Wrong);
        assert_eq!(
            next_checked(&gate).await,
            "right",
            "the first try jumps the guessers"
        );
        gate.release.send(()).unwrap();
        assert_eq!(honest.await.unwrap(), PasswordCheck::Matched);
        for _ in 0..REPEAT_QUEUE {
            gate.release.send(()).unwrap();
        }
        for task in waiting {
            assert_eq!(task.await.unwrap(), PasswordCheck::Wrong);
        }
    }
}
