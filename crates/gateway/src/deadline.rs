//! Per-request deadlines, kept by one coarse timer per serving thread.
//!
//! A tokio timeout per forwarded request costs a timer-wheel entry armed and
//! cleared every time, a large share of the gateway's own work per request.
//! Route timeouts are seconds long and need no millisecond precision, so
//! each serving thread keeps its requests' deadlines in a table instead, and
//! one ticker walks it when the earliest deadline is due: at most every
//! [`TICK`], at least every [`MAX_SLEEP`] while any are pending, not at all
//! while none are. A request's deadline therefore fires up to one tick late.
//! Only a deadline sooner than the ticker's plan (a route timeout under a
//! second) wakes the ticker to plan again.
//! The same table times how long a client takes to send a request's head
//! ([`ThreadTimer`], hyper's timer for its header-read timeout).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

/// How often pending deadlines may be checked at the most, and so how late
/// one may fire.
pub const TICK: Duration = Duration::from_millis(10);
/// The longest the ticker sleeps while deadlines are pending.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// The deadline passed before the future finished.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

struct Pending {
    at: Instant,
    waker: Option<Waker>,
    expired: bool,
}

struct Table {
    pending: Slab<Pending>,
    /// The ticker, parked while nothing is pending or asleep until `wake_at`.
    ticker: Option<Waker>,
    /// When the sleeping ticker walks the table next (none: parked, or
    /// about to walk it).
    wake_at: Option<Instant>,
    ticking: bool,
    /// How many times the ticker has walked the table (for tests).
    walks: u64,
}

thread_local! {
    static TABLE: RefCell<Table> =
        const { RefCell::new(Table { pending: Slab::new(), ticker: None, wake_at: None, ticking: false, walks: 0 }) };
}

/// Runs `future` until `at`; after that it is dropped and [`Elapsed`] returned.
/// Needs [`spawn_ticker`] on the same thread.
pub fn until<F: Future>(at: Instant, future: F) -> WithDeadline<F> {
    WithDeadline { future, entry: Entry::new(at) }
}

pin_project_lite::pin_project! {
    /// A future with a deadline (a plain struct, not an `async fn`, so that
    /// the future inside is held once: request futures are copied whole
    /// whenever they move).
    pub struct WithDeadline<F> {
        #[pin]
        future: F,
        entry: Entry,
    }
}

impl<F: Future> Future for WithDeadline<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.entry.expired(cx.waker()) {
            return Poll::Ready(Err(Elapsed));
        }
        this.future.poll(cx).map(Ok)
    }
}

/// One request's place in its thread's table, cleared when the request is
/// done. hyper wants its timers `Send`, so the entry remembers its table and
/// does nothing from another thread (the gateway never moves a connection
/// or a request off the thread that accepted it).
struct Entry {
    key: usize,
    table: u64,
}

impl Entry {
    fn new(at: Instant) -> Self {
        let (key, ticker) = TABLE.with_borrow_mut(|table| {
            debug_assert!(table.ticking, "deadlines need spawn_ticker on this thread");
            let ticker = match table.wake_at {
                // Parked: there is something to wait for now.
                None if table.pending.is_empty() => table.ticker.take(),
                // Asleep past this deadline: it plans again.
                Some(planned) if at < planned => {
                    table.wake_at = Some(at);
                    table.ticker.take()
                }
                _ => None,
            };
            (table.pending.insert(Pending { at, waker: None, expired: false }), ticker)
        });
        // Woken outside the borrow, as everywhere here.
        if let Some(ticker) = ticker {
            ticker.wake();
        }
        Self { key, table: table_id() }
    }

    /// Whether the deadline has passed; if not, `waker` is woken when it does.
    fn expired(&self, waker: &Waker) -> bool {
        if self.table != table_id() {
            debug_assert!(false, "a deadline polled on another thread");
            return false;
        }
        TABLE.with_borrow_mut(|table| {
            let pending = &mut table.pending[self.key];
            if !pending.expired {
                keep_waker(&mut pending.waker, waker);
            }
            pending.expired
        })
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if self.table != table_id() {
            return;
        }
        // During thread teardown the table may already be gone: nothing to clear.
        let _ = TABLE.try_with(|table| table.borrow_mut().pending.try_remove(self.key));
    }
}

/// Keeps `waker` in `slot`, unless the one there already wakes the same task
/// (a clone costs a reference count; most polls come from the same task).
pub(crate) fn keep_waker(slot: &mut Option<Waker>, waker: &Waker) {
    if !slot.as_ref().is_some_and(|kept| kept.will_wake(waker)) {
        *slot = Some(waker.clone());
    }
}

/// This thread's table, told from other threads' tables.
fn table_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static ID: Cell<u64> = const { Cell::new(0) };
    }
    ID.with(|id| {
        if id.get() == 0 {
            id.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        id.get()
    })
}

/// hyper's timer on this thread's deadline table (for the header-read
/// timeout: a tokio timer per request costs several times as much).
#[derive(Clone, Copy, Debug)]
pub struct ThreadTimer;

impl hyper::rt::Timer for ThreadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(TableSleep(Entry::new(deadline)))
    }
}

struct TableSleep(Entry);

impl Future for TableSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.expired(cx.waker()) { Poll::Ready(()) } else { Poll::Pending }
    }
}

impl hyper::rt::Sleep for TableSleep {}

/// Starts this thread's ticker (on its `LocalSet`), which wakes the requests
/// whose deadline has passed.
pub fn spawn_ticker() {
    TABLE.with_borrow_mut(|table| table.ticking = true);
    tokio::task::spawn_local(run_ticker());
}

async fn run_ticker() {
    let mut walked = Instant::now();
    loop {
        // Parked while nothing is pending.
        std::future::poll_fn(|cx| {
            TABLE.with_borrow_mut(|table| {
                if table.pending.is_empty() {
                    table.ticker = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
        })
        .await;
        let now = Instant::now();
        // Not walked more often than every tick.
        if now >= walked + TICK {
            walked = now;
            let Some(earliest) = expire(now) else { continue };
            sleep_until_due(earliest.clamp(now + TICK, now + MAX_SLEEP)).await;
        } else {
            sleep_until_due(walked + TICK).await;
        }
    }
}

/// Sleeps until `wake_at`, or the sooner deadline a new entry asks for.
async fn sleep_until_due(wake_at: Instant) {
    TABLE.with_borrow_mut(|table| table.wake_at = Some(wake_at));
    let mut sleep = std::pin::pin!(tokio::time::sleep_until(wake_at.into()));
    let mut planned = wake_at;
    std::future::poll_fn(|cx| {
        let asked = TABLE.with_borrow_mut(|table| {
            table.ticker = Some(cx.waker().clone());
            table.wake_at
        });
        if let Some(asked) = asked.filter(|asked| *asked < planned) {
            planned = asked;
            sleep.as_mut().reset(asked.into());
        }
        let woke = sleep.as_mut().poll(cx);
        if woke.is_ready() {
            TABLE.with_borrow_mut(|table| {
                table.wake_at = None;
                table.ticker = None;
            });
        }
        woke
    })
    .await;
}

/// Wakes the requests whose deadline has passed; the earliest deadline
/// still to come, if any.
fn expire(now: Instant) -> Option<Instant> {
    let mut earliest: Option<Instant> = None;
    let due: Vec<Waker> = TABLE.with_borrow_mut(|table| {
        table.walks += 1;
        let mut due = Vec::new();
        for (_, pending) in table.pending.iter_mut().filter(|(_, p)| !p.expired) {
            if pending.at <= now {
                pending.expired = true;
                due.extend(pending.waker.take());
            } else {
                earliest = Some(earliest.map_or(pending.at, |e| e.min(pending.at)));
            }
        }
        due
    });
    // Woken outside the borrow: a woken task may be polled at once.
    due.into_iter().for_each(Waker::wake);
    earliest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_a_local_set<F: Future>(future: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, async move {
            spawn_ticker();
            future.await
        })
    }

    #[test]
    fn a_future_that_finishes_in_time_gives_its_output() {
        let out = on_a_local_set(async {
            until(Instant::now() + Duration::from_secs(5), async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                7
            })
            .await
        });
        assert_eq!(out, Ok(7));
        assert!(TABLE.with_borrow(|t| t.pending.is_empty()), "a finished request leaves nothing pending");
    }

    #[test]
    fn a_future_past_its_deadline_is_dropped_within_a_tick_or_two() {
        let (out, waited) = on_a_local_set(async {
            let started = Instant::now();
            let out = until(started + Duration::from_millis(50), std::future::pending::<()>()).await;
            (out, started.elapsed())
        });
        assert_eq!(out, Err(Elapsed));
        assert!(waited >= Duration::from_millis(50), "not before the deadline: {waited:?}");
        assert!(waited < Duration::from_millis(50) + 10 * TICK, "about when it was due: {waited:?}");
    }

    #[test]
    fn the_ticker_sleeps_until_the_earliest_deadline_and_a_sooner_one_wakes_it() {
        on_a_local_set(async {
            let far = until(Instant::now() + Duration::from_secs(30), std::future::pending::<()>());
            let walks_before = TABLE.with_borrow(|t| t.walks);
            let watching = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let walks = TABLE.with_borrow(|t| t.walks) - walks_before;
                // Every tick would be 30 walks; asleep until the deadline or a second, one or two.
                assert!(walks <= 2, "the ticker walked {walks} times with one deadline 30 s away");
                // A sooner deadline, while the ticker sleeps for a second: on time.
                let started = Instant::now();
                let soon = until(started + Duration::from_millis(50), std::future::pending::<()>()).await;
                let waited = started.elapsed();
                assert_eq!(soon, Err(Elapsed));
                assert!(waited < Duration::from_millis(50) + 3 * TICK, "fired late: {waited:?}");
            };
            tokio::select! {
                _ = far => panic!("the far deadline fired"),
                _ = watching => {}
            }
        });
    }

    #[test]
    fn deadlines_fire_each_at_its_own_time_and_the_ticker_sleeps_in_between() {
        on_a_local_set(async {
            let started = Instant::now();
            let short = until(started + Duration::from_millis(30), std::future::pending::<()>());
            let long = until(started + Duration::from_millis(300), async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                "done"
            });
            let (short, long) = tokio::join!(short, long);
            assert_eq!(short, Err(Elapsed));
            assert_eq!(long, Ok("done"));
            // Nothing pending: a later deadline still fires (the ticker wakes again).
            tokio::time::sleep(Duration::from_millis(50)).await;
            let again = until(Instant::now() + Duration::from_millis(20), std::future::pending::<()>()).await;
            assert_eq!(again, Err(Elapsed));
        });
    }
}
