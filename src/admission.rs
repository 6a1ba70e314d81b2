//! [`Admission`]: the connection limit. Each session holds a [`Permit`] for as long as it
//! lives; at the limit the server refuses new clients, and a drain waits, without polling,
//! until every permit has come back. A session that has said its last words and only lingers
//! (reading and discarding, so that closing does not reset the connection under them) marks
//! its permit so: it is no longer waiting for anything, and a drain that gives up does not
//! count it as cut off. The admission also knows when the last permit out came back, so that a
//! server told to exit when idle exits that long after its last connection closed.
//!
//! It also keeps each client's share: at most `limits.max_connections_per_client` connections
//! from one source address (IPv6: one /64, what one host or site is typically given) at once.
//! A connection claims its share once its client is known, which behind a PROXY listener is
//! only after the header has been read; the claim is given back with the permit. A connection
//! refused over its share gives its permit back at once; on a TLS listener, where the refusal
//! can only be told after a handshake, at most [`REFUSALS_TOLD_AT_ONCE`] per client are being
//! told at any time ([`Telling`]), and the others are closed without a word, so that a client
//! over its share cannot take the server's connection slots nor much of its time.
//!
//! A count of permits out, checked against the limit: so a reload can lower or raise the limit
//! at once, without waiting for connections to end. Waiting for the count to reach zero admits
//! no fewer clients meanwhile (a semaphore's `acquire_many` would take every free permit while
//! it waits). Only the server admits, from one thread; permits come back from any thread.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    pin::pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use rustc_hash::FxHashMap;

use tokio::{sync::Notify, time::Instant};

/// At most `limit` connections at once.
#[derive(Debug, Clone)]
pub struct Admission {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    admitted: AtomicUsize,
    /// Of those admitted, how many do not only linger: counted apart, rather than as admitted
    /// minus lingering, which two reads could not give exactly while a permit comes back.
    unfinished: AtomicUsize,
    limit: AtomicU32,
    /// Told when the last permit out comes back.
    all_released: Notify,
    /// When the admission was made, the origin of `released_at_nanos`.
    created: Instant,
    /// When the last permit out came back (or the admission was made), in nanoseconds after
    /// `created`.
    released_at_nanos: AtomicU64,
    /// Connections one client may hold at once; 0 for no such limit.
    per_client: AtomicU32,
    /// Connections each client holds now; a client holding none, and being told no refusal,
    /// has no entry.
    shares: Mutex<FxHashMap<Client, Share>>,
}

/// How many connections refused over their client's share may be in the middle of being told
/// so (a TLS handshake, then the refusal) at once, per client.
pub const REFUSALS_TOLD_AT_ONCE: u32 = 4;

/// What one client holds.
#[derive(Debug, Default)]
struct Share {
    held: u32,
    /// Refusals being told over TLS ([`Telling`]).
    telling: u32,
    /// Connections refused since it reached its limit, for one log line per episode.
    refused: u64,
}

/// A client, as far as its share goes: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client(IpAddr);

impl Client {
    /// The client `ip` belongs to (an IPv4-mapped IPv6 address is its IPv4 address).
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => Self(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX)))),
            },
            v4 => Self(v4),
        }
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// A client already holds as many connections as one may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{client} already holds {limit} connections, the most one client may")]
pub struct OverShare {
    /// The client.
    pub client: Client,
    /// `limits.max_connections_per_client`.
    pub limit: u32,
    /// Whether this is the first refusal since the client reached its limit.
    pub first: bool,
}

impl Shared {
    fn released_at(&self) -> Instant {
        self.created + Duration::from_nanos(self.released_at_nanos.load(Ordering::Acquire))
    }
}

/// One admitted connection; given back when dropped, however its session ends.
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
    lingering: bool,
    /// The client whose share this connection counts in, once claimed.
    client: Option<Client>,
    /// The load of the worker it was placed on, counted down when the permit comes back.
    load: Option<Arc<AtomicUsize>>,
}

impl Permit {
    /// Counts this connection in the share of `ip`'s client, if the client has room.
    ///
    /// # Errors
    ///
    /// [`OverShare`] if the client holds `limits.max_connections_per_client` already; the
    /// permit is then still to be dropped by the caller.
    pub fn claim_share(&mut self, ip: IpAddr) -> Result<(), OverShare> {
        let limit = self.shared.per_client.load(Ordering::Relaxed);
        if limit == 0 || self.client.is_some() {
            return Ok(());
        }
        let client = Client::of(ip);
        let mut shares = self.shared.shares.lock().unwrap_or_else(PoisonError::into_inner);
        let share = shares.entry(client).or_default();
        if share.held >= limit {
            share.refused += 1;
            return Err(OverShare { client, limit, first: share.refused == 1 });
        }
        share.held += 1;
        self.client = Some(client);
        Ok(())
    }

    /// Gives this permit back for a connection refused over its client's share, and returns a
    /// [`Telling`] if the client has fewer than [`REFUSALS_TOLD_AT_ONCE`] refusals being told;
    /// `None` if the refusal is to go untold.
    pub fn into_refusal(self, over: &OverShare) -> Option<Telling> {
        let shared = self.shared.clone();
        drop(self);
        let mut shares = shared.shares.lock().unwrap_or_else(PoisonError::into_inner);
        let share = shares.entry(over.client).or_default();
        if share.telling >= REFUSALS_TOLD_AT_ONCE {
            return None;
        }
        share.telling += 1;
        drop(shares);
        Some(Telling { shared, client: over.client })
    }

    /// Counts this connection in `load` (its worker's) until the permit comes back, and no
    /// longer in the load it was counted in before (a connection placed again).
    pub fn count_in(&mut self, load: Arc<AtomicUsize>) {
        load.fetch_add(1, Ordering::Relaxed);
        if let Some(before) = self.load.replace(load) {
            before.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The connection has had every answer and only lingers until it closes.
    pub fn linger(&mut self) {
        if !self.lingering {
            self.lingering = true;
            self.shared.unfinished.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(load) = &self.load {
            load.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(client) = self.client {
            let mut shares = self.shared.shares.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(share) = shares.get_mut(&client) {
                share.held -= 1;
                if share.held == 0 && share.telling == 0 {
                    shares.remove(&client);
                }
            }
        }
        if !self.lingering {
            self.shared.unfinished.fetch_sub(1, Ordering::AcqRel);
        }
        if self.shared.admitted.fetch_sub(1, Ordering::AcqRel) == 1 {
            let nanos = self.shared.created.elapsed().as_nanos();
            self.shared.released_at_nanos.store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Release);
            self.shared.all_released.notify_waiters();
        }
    }
}

/// A refusal over a client's share being told to it; counted in the client's share of such
/// refusals until dropped.
#[derive(Debug)]
pub struct Telling {
    shared: Arc<Shared>,
    client: Client,
}

impl Drop for Telling {
    fn drop(&mut self) {
        let mut shares = self.shared.shares.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(share) = shares.get_mut(&self.client) {
            share.telling -= 1;
            if share.held == 0 && share.telling == 0 {
                shares.remove(&self.client);
            }
        }
    }
}

impl Admission {
    /// Admits up to `limit` connections at once.
    pub fn new(limit: u32) -> Self {
        let shared = Shared {
            admitted: AtomicUsize::new(0),
            unfinished: AtomicUsize::new(0),
            limit: AtomicU32::new(limit),
            all_released: Notify::new(),
            created: Instant::now(),
            released_at_nanos: AtomicU64::new(0),
            per_client: AtomicU32::new(0),
            shares: Mutex::default(),
        };
        Self { shared: Arc::new(shared) }
    }

    /// A permit for one more connection, or `None` if `limit` are already admitted.
    pub fn try_admit(&self) -> Option<Permit> {
        let limit = self.limit() as usize;
        self.shared
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |admitted| (admitted < limit).then_some(admitted + 1))
            .ok()
            .map(|_| {
                self.shared.unfinished.fetch_add(1, Ordering::AcqRel);
                Permit { shared: self.shared.clone(), lingering: false, client: None, load: None }
            })
    }

    /// Connections admitted whose permit has not come back yet.
    pub fn admitted(&self) -> usize {
        self.shared.admitted.load(Ordering::Acquire)
    }

    /// Connections admitted that do not only linger: those still owed something.
    pub fn unfinished(&self) -> usize {
        self.shared.unfinished.load(Ordering::Acquire)
    }

    /// The most connections admitted at once.
    pub fn limit(&self) -> u32 {
        self.shared.limit.load(Ordering::Relaxed)
    }

    /// Changes the limit for connections admitted from now on; those already admitted stay.
    pub fn set_limit(&self, limit: u32) {
        self.shared.limit.store(limit, Ordering::Relaxed);
    }

    /// Limits each client to `limit` connections at once from now on (0: no such limit);
    /// connections already held stay.
    pub fn set_per_client_limit(&self, limit: u32) {
        self.shared.per_client.store(limit, Ordering::Relaxed);
    }

    /// Waits until no permit is out.
    pub async fn all_released(&self) {
        loop {
            // Registered before the count is read, so a release in between is not missed.
            let mut released = pin!(self.shared.all_released.notified());
            released.as_mut().enable();
            if self.admitted() == 0 {
                return;
            }
            released.await;
        }
    }

    /// Waits until no permit has been out for `quiet`: that long after the last one came back
    /// (or after the admission was made, if none was ever taken), with none taken meanwhile.
    pub async fn idle_for(&self, quiet: Duration) {
        loop {
            self.all_released().await;
            let since = self.shared.released_at();
            tokio::time::sleep_until(since + quiet).await;
            if self.admitted() == 0 && self.shared.released_at() == since {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_limit_refuses_one_more_and_a_returned_permit_admits_again() {
        let admission = Admission::new(2);
        let first = admission.try_admit().unwrap();
        let _second = admission.try_admit().unwrap();
        assert!(admission.try_admit().is_none());
        assert_eq!(admission.admitted(), 2);
        drop(first);
        assert_eq!(admission.admitted(), 1);
        assert!(admission.try_admit().is_some());
    }

    #[tokio::test]
    async fn a_lingering_connection_is_admitted_but_not_unfinished() {
        let admission = Admission::new(3);
        let mut lingering = admission.try_admit().unwrap();
        let _working = admission.try_admit().unwrap();
        lingering.linger();
        lingering.linger();
        assert_eq!((admission.admitted(), admission.unfinished()), (2, 1));
        drop(lingering);
        assert_eq!((admission.admitted(), admission.unfinished()), (1, 1));
    }

    #[tokio::test]
    async fn a_lower_limit_refuses_at_once_and_a_higher_one_admits_at_once() {
        let admission = Admission::new(3);
        let held: Vec<Permit> = (0..3).map(|_| admission.try_admit().unwrap()).collect();
        admission.set_limit(2);
        assert!(admission.try_admit().is_none());
        assert_eq!(admission.admitted(), 3, "those admitted stay");
        admission.set_limit(5);
        assert!(admission.try_admit().is_some());
        drop(held);
    }

    #[test]
    fn a_client_over_its_share_is_refused_and_others_are_not() {
        let admission = Admission::new(10);
        admission.set_per_client_limit(2);
        let claim = |ip: &str| {
            let mut permit = admission.try_admit().unwrap();
            permit.claim_share(ip.parse().unwrap()).map(|()| permit)
        };
        let first = claim("127.0.0.2").unwrap();
        let _second = claim("::ffff:127.0.0.2").unwrap();
        let refused = claim("127.0.0.2").unwrap_err();
        assert_eq!(
            (refused.to_string(), refused.first),
            ("127.0.0.2 already holds 2 connections, the most one client may".into(), true)
        );
        assert!(!claim("127.0.0.2").unwrap_err().first, "one log line per episode");
        let _other = claim("127.0.0.3").unwrap();
        let _v6 = claim("2001:db8::1").unwrap();
        let _same_64 = claim("2001:db8::ffff:2").unwrap();
        assert_eq!(claim("2001:db8::3").unwrap_err().client.to_string(), "2001:db8::/64");
        let _next_64 = claim("2001:db8:0:1::1").unwrap();
        drop(first);
        let _again = claim("127.0.0.2").expect("a connection given back makes room");
        assert_eq!(admission.admitted(), 6);
    }

    #[test]
    fn refusals_give_their_slots_back_and_only_a_few_per_client_are_told_at_once() {
        let admission = Admission::new(10);
        admission.set_per_client_limit(1);
        let refused = || {
            let mut permit = admission.try_admit().unwrap();
            let over = permit.claim_share("127.0.0.2".parse().unwrap()).unwrap_err();
            permit.into_refusal(&over)
        };
        let held = {
            let mut permit = admission.try_admit().unwrap();
            permit.claim_share("127.0.0.2".parse().unwrap()).unwrap();
            permit
        };
        let mut telling: Vec<Telling> = (0..REFUSALS_TOLD_AT_ONCE).map(|_| refused().unwrap()).collect();
        assert!(refused().is_none(), "more refusals told at once than {REFUSALS_TOLD_AT_ONCE}");
        assert_eq!(admission.admitted(), 1, "a refused connection keeps its slot");
        telling.pop();
        assert!(refused().is_some(), "a refusal told makes room for another");
        // The client's entry outlives its connections while refusals are told, and then goes.
        drop(held);
        drop(telling);
        let mut permit = admission.try_admit().unwrap();
        permit.claim_share("127.0.0.2".parse().unwrap()).expect("the share was given back");
        assert_eq!(admission.shared.shares.lock().unwrap().len(), 1);
        drop(permit);
        assert!(admission.shared.shares.lock().unwrap().is_empty(), "an entry left behind");
    }

    #[test]
    fn without_a_per_client_limit_one_client_may_take_every_connection() {
        let admission = Admission::new(3);
        let held: Vec<Permit> = (0..3)
            .map(|_| {
                let mut permit = admission.try_admit().unwrap();
                permit.claim_share("127.0.0.2".parse().unwrap()).unwrap();
                permit
            })
            .collect();
        assert_eq!(held.len(), 3);
    }

    #[tokio::test]
    async fn all_released_waits_for_the_last_permit() {
        let admission = Admission::new(3);
        let permit = admission.try_admit().unwrap();
        let waiting = tokio::spawn({
            let admission = admission.clone();
            async move { admission.all_released().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "released while a permit was held");
        drop(permit);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert_eq!(admission.admitted(), 0, "waiting holds nothing afterwards");
    }

    #[tokio::test(start_paused = true)]
    async fn idleness_is_counted_from_the_last_permit_back_however_many_came_and_went() {
        let admission = Admission::new(3);
        let start = Instant::now();
        let idle = tokio::spawn({
            let admission = admission.clone();
            async move {
                admission.idle_for(Duration::from_secs(2)).await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let held = admission.try_admit().unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held); // at 2 s
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(admission.try_admit().unwrap()); // at 3.5 s, while the wait from 2 s runs
        assert_eq!(idle.await.unwrap() - start, Duration::from_millis(5500), "2 s after the last one came back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_never_connected_to_is_idle_from_its_start() {
        let admission = Admission::new(3);
        let start = Instant::now();
        admission.idle_for(Duration::from_secs(2)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn waiting_for_all_released_admits_as_many_as_before() {
        let admission = Admission::new(3);
        let first = admission.try_admit().unwrap();
        let waiting = tokio::spawn({
            let admission = admission.clone();
            async move { admission.all_released().await }
        });
        tokio::task::yield_now().await;
        let others: Vec<Permit> = (0..2).map(|_| admission.try_admit().expect("admitted while waiting")).collect();
        assert_eq!(admission.admitted(), 3);
        assert!(admission.try_admit().is_none(), "the limit still holds");
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "released while two permits were out");
        drop(others);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    }
}
