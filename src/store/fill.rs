//! The fill engine: brings one cold blob from upstream into the cache, once, however many
//! clients ask for it at the same time.
//!
//! Per digest in flight there is one [`Fill`]: the size, a slice size, a state per slice
//! (missing / fetching / landed, plus how many bytes of it are written), the sparse data file in
//! `.lancached/partial/`, and the waiting responses with the offset each needs next. A few
//! upstream workers fetch slices: half of them demand first (the lowest missing slice a waiter is
//! blocked on, else the lowest missing slice at or after the smallest offset any waiter needs,
//! else any), the other half in order (the lowest missing slice), which keeps the hashed prefix
//! close behind the download so that verification adds no long tail after the last byte.
//! Bytes reach waiters as soon as they are written, within a slice too.
//!
//! Nothing on the download's path waits for the disk. A landed slice is marked in memory at
//! once; one persister task per fill makes landed slices durable in batches (`fdatasync`) and
//! only then records them in the [`SliceMap`], so the map never names bytes that are not on
//! disk and a restart resumes without refetching them. A hashing task follows the contiguous
//! written prefix; at the end the digest and size decide. A match releases the blob's last
//! byte at once (the verified state); then the file is fsync'd and renamed into `blobs/`
//! (same inode, so open readers keep reading), and a failure there fails the fill and leaves
//! nothing in `blobs/`. A mismatch discards it. Every waiter ends with exactly one of: all its
//! bytes, or an error.
//!
//! A fill belongs to nobody's request: clients that leave do not cancel it.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sha2::Digest as _;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

use super::layout::Layout;
use super::mapped::Mapping;
use super::names::Digest;
use super::pins::Pins;
use super::slicemap::SliceMap;
use super::stats::{CacheCounters, Event};

/// Attempts per slice before the fill is failed.
const SLICE_ATTEMPTS: u32 = 5;
/// Largest chunk a reader or the hasher reads at once.
pub const READ_CHUNK: usize = 1 << 20;
/// Upstream bytes are written to the data file in batches of about this size.
const WRITE_BATCH: usize = 256 << 10;

/// Why an upstream fetch failed; `kind` is the stats label.
#[derive(Debug, Clone)]
pub struct FetchError {
    pub kind: &'static str,
    pub message: String,
}

impl FetchError {
    pub fn new(kind: &'static str, message: impl Into<String>) -> FetchError {
        FetchError {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

pub type ByteStream = BoxStream<'static, Result<Bytes, FetchError>>;

/// Fetches byte ranges of one blob from upstream. The stream must yield exactly the bytes
/// `start..=end` (it is checked: more is an error, fewer is a truncation and retried).
pub trait Fetcher: Send + Sync + 'static {
    fn fetch(&self, start: u64, end: u64) -> BoxFuture<'static, Result<ByteStream, FetchError>>;
}

/// Tunables, read from `[cache]` when a fill starts.
#[derive(Debug, Clone, Copy)]
pub struct FillParams {
    pub slice_size: u64,
    pub connections: usize,
    pub stall_timeout: Duration,
}

/// Where a fill's blob comes from (recorded in the slice map).
#[derive(Debug, Clone)]
pub struct Origin {
    pub registry: String,
    pub repository: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SliceState {
    Missing,
    Fetching,
    Landed,
}

#[derive(Debug, Clone)]
enum Outcome {
    Running,
    /// The whole blob is written and its sha256 matches: every byte may go out, while the
    /// file is made durable and renamed into `blobs/`.
    Verified,
    Done,
    Failed(String),
}

impl Outcome {
    /// Whether all of the blob's bytes, the last one included, may be served.
    fn verified(&self) -> bool {
        matches!(self, Outcome::Verified | Outcome::Done)
    }
}

/// The two points where a fill waits for the disk; tests make each of them fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPoint {
    /// The persister's `fdatasync` before it records landed slices in the slice map.
    Slices,
    /// Publication's `fsync` before the rename into `blobs/`.
    Publish,
}

/// How a fill makes its data file durable at a [`SyncPoint`].
pub type SyncFn = Arc<dyn Fn(&std::fs::File, SyncPoint) -> std::io::Result<()> + Send + Sync>;

fn real_sync() -> SyncFn {
    Arc::new(|file, point| match point {
        SyncPoint::Slices => file.sync_data(),
        SyncPoint::Publish => file.sync_all(),
    })
}

struct FillState {
    slices: Vec<SliceState>,
    /// Bytes written from the start of each slice (contiguous), landed or not.
    written: Vec<u64>,
    /// Landed slices whose bytes are known to be on disk and named in the slice map.
    durable: Vec<bool>,
    /// Waiter id -> the next offset it needs.
    waiters: HashMap<u64, u64>,
    next_waiter: u64,
    outcome: Outcome,
}

/// One blob being filled.
pub struct Fill {
    pub digest: Digest,
    pub size: u64,
    pub origin: Origin,
    slice_size: u64,
    file: Arc<std::fs::File>,
    /// The data file mapped (for readers and the hasher); `None` for an empty blob or when
    /// mapping failed (then they pread).
    mapping: Option<Arc<Mapping>>,
    data_path: PathBuf,
    map_path: PathBuf,
    blob_path: PathBuf,
    state: Mutex<FillState>,
    /// Serialises slice-map writes, and orders them before publication's removal of the map.
    map_io: Mutex<()>,
    /// One `pwritev` into the data file at a time. A buffered write holds the inode's lock for
    /// its whole copy, and a second writer would spin on it inside the kernel (profiled: 11% of
    /// a 4 GiB fill's CPU, and a runtime worker stuck in a syscall meanwhile); waiting here
    /// instead parks only the task, and its socket's receive window holds the upstream back.
    write_turn: tokio::sync::Mutex<()>,
    sync: SyncFn,
    /// Bumped on every write and state change; waiters and the persister sleep on it.
    progress: watch::Sender<u64>,
    /// The same bumps for the hashing thread, which sleeps outside the runtime: a generation
    /// count, and whether the fill's driver is gone (then the thread stops, so that dropping
    /// the runtime at shutdown never waits on a hash that nobody will finish).
    hash_wake: (Mutex<(u64, bool)>, std::sync::Condvar),
    /// A write failed for want of space (ENOSPC, EDQUOT): the fill's files go when it fails.
    out_of_space: std::sync::atomic::AtomicBool,
}

/// What a request finds when it asks for a blob.
pub enum Joined {
    /// Already in `blobs/`: serve the file.
    Published,
    Filling(Arc<Fill>),
}

/// Progress of a fill for `lancachectl stats`.
pub struct FillSnapshot {
    pub digest: Digest,
    pub origin: Origin,
    pub size: u64,
    pub landed: u64,
    pub waiters: u32,
    pub state: FillStage,
}

/// Where a blob stands, as `stats` and `prefetch` report it. An enum rather than the words the
/// control protocol shows, so the store does not know how its clients spell them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillStage {
    /// Wanted but no fill has started yet (prefetch only).
    Pending,
    /// Slices are being fetched.
    Filling,
    /// Verified, being made durable and renamed into `blobs/`.
    Publishing,
    /// In `blobs/`.
    Done,
    /// The fill failed, for this reason.
    Failed(String),
}

/// All fills in flight (single-flight per digest) and the bound on how many run at once.
pub struct Fills {
    layout: Layout,
    pins: Pins,
    counters: Arc<CacheCounters>,
    active: Mutex<HashMap<Digest, Arc<Fill>>>,
    permits: Arc<Semaphore>,
    /// Told of every blob a fill publishes (the access index marks it as fetched).
    on_publish: OnceLock<PublishHook>,
    sync: SyncFn,
}

/// See [`Fills::on_publish`].
pub type PublishHook = Box<dyn Fn(&Digest) + Send + Sync>;

impl Fills {
    pub fn new(
        layout: Layout,
        pins: Pins,
        counters: Arc<CacheCounters>,
        max_fills: usize,
    ) -> Fills {
        Fills {
            layout,
            pins,
            counters,
            active: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(max_fills.max(1))),
            on_publish: OnceLock::new(),
            sync: real_sync(),
        }
    }

    /// Replaces the fsyncs of every later fill (tests inject disk failures and delays here).
    #[cfg(test)]
    fn with_sync(mut self, sync: SyncFn) -> Fills {
        self.sync = sync;
        self
    }

    /// Sets what to call when a fill publishes a verified blob (once; later calls are ignored).
    pub fn on_publish(&self, hook: PublishHook) {
        let _ = self.on_publish.set(hook);
    }

    /// What a request for `digest` would join without starting anything: the fill in flight,
    /// or the published blob. `None` means joining would start a new fill.
    pub fn existing(&self, digest: &Digest) -> Option<Joined> {
        if let Some(f) = self.active.lock().unwrap().get(digest) {
            return Some(Joined::Filling(f.clone()));
        }
        self.layout
            .blob_path(digest)
            .exists()
            .then_some(Joined::Published)
    }

    /// Joins the fill in flight for `digest`, or starts one (resuming from a slice map left by
    /// an earlier run when it matches).
    pub fn join(
        self: &Arc<Self>,
        digest: &Digest,
        size: u64,
        origin: Origin,
        params: FillParams,
        fetcher: Arc<dyn Fetcher>,
    ) -> std::io::Result<Joined> {
        let mut active = self.active.lock().unwrap();
        if let Some(f) = active.get(digest) {
            return Ok(Joined::Filling(f.clone()));
        }
        let blob_path = self.layout.blob_path(digest);
        if blob_path.exists() {
            return Ok(Joined::Published);
        }
        let fill = Arc::new(Fill::open(
            &self.layout,
            digest,
            size,
            origin,
            params,
            self.sync.clone(),
        )?);
        active.insert(digest.clone(), fill.clone());
        drop(active);
        let this = self.clone();
        let f = fill.clone();
        tokio::spawn(async move { this.drive(f, params, fetcher).await });
        Ok(Joined::Filling(fill))
    }

    /// Fills in flight, for stats.
    pub fn snapshot(&self) -> Vec<FillSnapshot> {
        let active: Vec<Arc<Fill>> = self.active.lock().unwrap().values().cloned().collect();
        let mut out: Vec<FillSnapshot> = active
            .iter()
            .map(|f| {
                let st = f.state.lock().unwrap();
                let landed = st
                    .slices
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| **s == SliceState::Landed)
                    .map(|(i, _)| f.slice_len(i))
                    .sum();
                FillSnapshot {
                    digest: f.digest.clone(),
                    origin: f.origin.clone(),
                    size: f.size,
                    landed,
                    waiters: st.waiters.len() as u32,
                    state: match &st.outcome {
                        Outcome::Running => FillStage::Filling,
                        Outcome::Verified => FillStage::Publishing,
                        Outcome::Done => FillStage::Done,
                        Outcome::Failed(e) => FillStage::Failed(e.clone()),
                    },
                }
            })
            .collect();
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        out
    }

    /// Slice maps left in `partial/` by an earlier run: fills to resume.
    pub fn leftovers(&self) -> Vec<SliceMap> {
        std::fs::read_dir(self.layout.partial_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".map"))
            .filter_map(|e| {
                let m = SliceMap::load(&e.path())?;
                let published = Digest::parse(&m.digest)
                    .map(|d| self.layout.blob_path(&d).exists())
                    .unwrap_or(true);
                if published {
                    // Left behind by a crash between publishing and removing the map.
                    let _ = std::fs::remove_file(e.path());
                    let _ = std::fs::remove_file(e.path().with_extension("data"));
                    return None;
                }
                Some(m)
            })
            .collect()
    }

    /// Runs one fill to its end: workers fetch slices, the hasher decides.
    async fn drive(
        self: Arc<Self>,
        fill: Arc<Fill>,
        params: FillParams,
        fetcher: Arc<dyn Fetcher>,
    ) {
        let _pin = self.pins.pin(&fill.digest);
        let _permit = self.permits.clone().acquire_owned().await;
        let mut workers = tokio::task::JoinSet::new();
        for n in 0..params.connections.max(1) {
            // With several connections, half serve demand and half fetch in order.
            let demand_first = n % 2 == 0;
            workers.spawn(worker(
                demand_first,
                fill.clone(),
                fetcher.clone(),
                params,
                self.counters.clone(),
            ));
        }
        workers.spawn(persister(fill.clone(), self.counters.clone()));
        let verdict = hash_and_publish(&fill).await;
        workers.abort_all();
        match verdict {
            Ok(()) => {
                CacheCounters::bump(&self.counters.fills_completed);
                if let Some(hook) = self.on_publish.get() {
                    hook(&fill.digest);
                }
                tracing::info!(digest = %fill.digest, size = fill.size, "blob filled and verified");
            }
            Err(e) => {
                CacheCounters::bump(&self.counters.fills_failed);
                if e.kind == "digest_mismatch" || e.kind == "disk" {
                    self.counters.failure(e.kind);
                }
                tracing::warn!(digest = %fill.digest, "fill failed: {e}");
                fill.fail(e.to_string());
                if fill.out_of_space.load(std::sync::atomic::Ordering::SeqCst) {
                    // What it wrote holds the very space the disk lacks: give it back rather
                    // than keep it for a resume (a later fill starts over).
                    let f = fill.clone();
                    let _ = tokio::task::spawn_blocking(move || f.discard()).await;
                    tracing::warn!(digest = %fill.digest, "out of disk space: removed the partial blob");
                }
            }
        }
        self.active.lock().unwrap().remove(&fill.digest);
    }
}

impl Fill {
    fn open(
        layout: &Layout,
        digest: &Digest,
        size: u64,
        origin: Origin,
        params: FillParams,
        sync: SyncFn,
    ) -> std::io::Result<Fill> {
        std::fs::create_dir_all(layout.partial_dir())?;
        let data_path = layout
            .partial_dir()
            .join(format!("{}.data", digest.file_name()));
        let map_path = layout
            .partial_dir()
            .join(format!("{}.map", digest.file_name()));
        let slice_size = params.slice_size.max(64 * 1024);
        let n = size.div_ceil(slice_size) as usize;
        let mut slices = vec![SliceState::Missing; n];
        let mut written = vec![0; n];
        let mut durable = vec![false; n];
        // A map is trusted only if it describes this very fill and its data file exists.
        let previous = SliceMap::load(&map_path).filter(|m| {
            m.digest == digest.as_str()
                && m.size == size
                && m.slice_size == slice_size
                && data_path.exists()
        });
        if previous.is_none() {
            // A new inode rather than truncating in place: a mapping of an earlier attempt's
            // file may still be read by a response on its way out.
            match std::fs::remove_file(&data_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data_path)?;
        file.set_len(size)?;
        let mapping = Mapping::new(&file, size).ok().map(Arc::new);
        let this = Fill {
            digest: digest.clone(),
            size,
            origin,
            slice_size,
            file: Arc::new(file),
            mapping,
            data_path,
            map_path,
            blob_path: layout.blob_path(digest),
            state: Mutex::new(FillState {
                slices: vec![],
                written: vec![],
                durable: vec![],
                waiters: HashMap::new(),
                next_waiter: 0,
                outcome: Outcome::Running,
            }),
            map_io: Mutex::new(()),
            write_turn: tokio::sync::Mutex::new(()),
            sync,
            progress: watch::channel(0).0,
            hash_wake: (Mutex::new((0, false)), std::sync::Condvar::new()),
            out_of_space: std::sync::atomic::AtomicBool::new(false),
        };
        if let Some(m) = &previous {
            for &i in &m.landed {
                if let Some(s) = slices.get_mut(i as usize) {
                    *s = SliceState::Landed;
                    written[i as usize] = this.slice_len(i as usize);
                    durable[i as usize] = true;
                }
            }
            tracing::info!(digest = %digest, landed = m.landed.len(), of = n, "resuming fill");
        } else {
            this.map().store(&this.map_path)?;
        }
        {
            let mut st = this.state.lock().unwrap();
            st.slices = slices;
            st.written = written;
            st.durable = durable;
        }
        if previous.is_some() {
            this.map().store(&this.map_path)?;
        }
        Ok(this)
    }

    fn slice_start(&self, i: usize) -> u64 {
        i as u64 * self.slice_size
    }

    fn slice_len(&self, i: usize) -> u64 {
        (self.size - self.slice_start(i)).min(self.slice_size)
    }

    fn map(&self) -> SliceMap {
        let st = self.state.lock().unwrap();
        SliceMap {
            digest: self.digest.to_string(),
            size: self.size,
            slice_size: self.slice_size,
            registry: self.origin.registry.clone(),
            repository: self.origin.repository.clone(),
            // Only what the persister has seen reach the disk, never what merely landed.
            landed: st
                .durable
                .iter()
                .enumerate()
                .filter(|(_, d)| **d)
                .map(|(i, _)| i as u64)
                .collect(),
        }
    }

    /// Removes the fill's files (data and slice map); open readers keep their inode.
    fn discard(&self) {
        let _io = self.map_io.lock().unwrap();
        let _ = std::fs::remove_file(&self.map_path);
        let _ = std::fs::remove_file(&self.data_path);
    }

    /// Notes an I/O error that means the disk (or quota) is full.
    fn note_io_error(&self, e: &std::io::Error) {
        if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
            self.out_of_space
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn notify(&self) {
        self.progress.send_modify(|g| *g = g.wrapping_add(1));
        let (m, c) = &self.hash_wake;
        let mut w = m.lock().unwrap();
        w.0 = w.0.wrapping_add(1);
        c.notify_all();
    }

    fn fail(&self, why: String) {
        let mut st = self.state.lock().unwrap();
        if matches!(st.outcome, Outcome::Running) {
            st.outcome = Outcome::Failed(why);
        }
        drop(st);
        self.notify();
    }

    /// Waits for the fill's end: `Ok` once the blob is published, `Err` with the reason once
    /// the fill has failed.
    pub async fn finished(&self) -> Result<(), String> {
        let mut rx = self.progress.subscribe();
        loop {
            let outcome = self.state.lock().unwrap().outcome.clone();
            match outcome {
                Outcome::Done => return Ok(()),
                Outcome::Failed(e) => return Err(e),
                Outcome::Running | Outcome::Verified => {}
            }
            if rx.changed().await.is_err() {
                return Err("the fill ended without a verdict".into());
            }
        }
    }

    /// A reader of the blob from `offset` on; it tells the schedulers what it needs.
    pub fn waiter(self: &Arc<Self>, offset: u64) -> Waiter {
        let mut st = self.state.lock().unwrap();
        let id = st.next_waiter;
        st.next_waiter += 1;
        st.waiters.insert(id, offset);
        drop(st);
        Waiter {
            fill: self.clone(),
            id,
            rx: self.progress.subscribe(),
        }
    }

    /// Picks the next slice for a worker and marks it fetching. A demand-first worker serves
    /// blocked waiters; the others go in order, so that the hashed prefix keeps up with the
    /// download and verification does not become a tail of its own after the last byte.
    fn pick(&self, demand_first: bool) -> Option<usize> {
        let mut st = self.state.lock().unwrap();
        if !matches!(st.outcome, Outcome::Running) {
            return None;
        }
        let missing = |st: &FillState, i: usize| st.slices.get(i) == Some(&SliceState::Missing);
        let ss = self.slice_size;
        // A waiter blocked on a slice nobody fetches yet comes first (lowest such slice).
        let blocked = st
            .waiters
            .values()
            .map(|&o| (o / ss) as usize)
            .filter(|&i| missing(&st, i))
            .min();
        let ahead = || {
            let from = st.waiters.values().min().map(|&o| (o / ss) as usize)?;
            (from..st.slices.len()).find(|&i| missing(&st, i))
        };
        let lowest = || (0..st.slices.len()).find(|&i| missing(&st, i));
        let pick = if demand_first {
            blocked.or_else(ahead).or_else(lowest)?
        } else {
            lowest()?
        };
        st.slices[pick] = SliceState::Fetching;
        Some(pick)
    }

    /// Whether a waiter is blocked inside slice `i` (for the rate limiter's demand first).
    fn demanded(&self, i: usize) -> bool {
        let ss = self.slice_size;
        let st = self.state.lock().unwrap();
        st.waiters.values().any(|&o| (o / ss) as usize == i)
    }

    /// The end of the contiguous written prefix starting at `pos`'s slice.
    fn contiguous_end(&self, st: &FillState, pos: u64) -> u64 {
        let mut i = (pos / self.slice_size) as usize;
        let mut end = pos;
        while i < st.slices.len() {
            end = self.slice_start(i) + st.written[i];
            if st.written[i] < self.slice_len(i) {
                break;
            }
            i += 1;
        }
        end.max(pos)
    }
}

/// One reader of a fill. Dropping it (client gone) only removes its demand.
pub struct Waiter {
    fill: Arc<Fill>,
    id: u64,
    rx: watch::Receiver<u64>,
}

impl Waiter {
    /// Waits until the byte at `pos` is written and returns how many bytes from `pos` on are
    /// readable now; an error once the fill has failed.
    pub async fn available(&mut self, pos: u64) -> std::io::Result<u64> {
        loop {
            self.rx.borrow_and_update();
            {
                let mut st = self.fill.state.lock().unwrap();
                st.waiters.insert(self.id, pos);
                if let Outcome::Failed(e) = &st.outcome {
                    return Err(std::io::Error::other(format!("fill failed: {e}")));
                }
                if pos >= self.fill.size {
                    return Ok(0);
                }
                // The blob's last byte goes out only once the whole blob is verified, so a
                // response that ends at the end of the blob never completes with bad bytes.
                // Verified is enough: durability is the cache's business, not the client's.
                let limit = if st.outcome.verified() {
                    self.fill.size
                } else {
                    self.fill.size - 1
                };
                let i = (pos / self.fill.slice_size) as usize;
                let end = (self.fill.slice_start(i) + st.written[i]).min(limit);
                if end > pos {
                    return Ok(end - pos);
                }
            }
            if self.rx.changed().await.is_err() {
                return Err(std::io::Error::other("fill ended"));
            }
        }
    }

    pub fn file(&self) -> Arc<std::fs::File> {
        self.fill.file.clone()
    }

    pub fn mapping(&self) -> Option<Arc<Mapping>> {
        self.fill.mapping.clone()
    }

    pub fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.fill.state.lock().unwrap().waiters.remove(&self.id);
    }
}

/// Fetches slices until none is missing or the fill ends.
async fn worker(
    demand_first: bool,
    fill: Arc<Fill>,
    fetcher: Arc<dyn Fetcher>,
    params: FillParams,
    counters: Arc<CacheCounters>,
) {
    while let Some(i) = fill.pick(demand_first) {
        match fetch_slice(&fill, i, &*fetcher, params, &counters).await {
            Ok(()) => {
                // Landed in memory at once, so that `pick` and the waiters move on; the
                // persister makes it durable and records it later, off this worker's path.
                fill.state.lock().unwrap().slices[i] = SliceState::Landed;
                fill.notify();
            }
            Err(e) => {
                fill.fail(e.to_string());
                return;
            }
        }
    }
}

/// Makes landed slices durable and records them in the slice map, in batches: one
/// `fdatasync` covers every slice that landed before it started, then the map names them.
/// The download never waits for the disk; the map only ever names bytes that are on disk.
async fn persister(fill: Arc<Fill>, counters: Arc<CacheCounters>) {
    let mut rx = fill.progress.subscribe();
    loop {
        rx.borrow_and_update();
        let batch: Vec<usize> = {
            let st = fill.state.lock().unwrap();
            if !matches!(st.outcome, Outcome::Running | Outcome::Verified) {
                return;
            }
            (0..st.slices.len())
                .filter(|&i| st.slices[i] == SliceState::Landed && !st.durable[i])
                .collect()
        };
        if batch.is_empty() {
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let f = fill.clone();
        let persisted = tokio::task::spawn_blocking(move || {
            (f.sync)(&f.file, SyncPoint::Slices)?;
            let _io = f.map_io.lock().unwrap();
            let mut st = f.state.lock().unwrap();
            if !matches!(st.outcome, Outcome::Running | Outcome::Verified) {
                // Published or failed meanwhile: the map is gone or irrelevant.
                return Ok(());
            }
            for &i in &batch {
                st.durable[i] = true;
            }
            drop(st);
            f.map().store(&f.map_path)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        if let Err(e) = persisted {
            fill.note_io_error(&e);
            counters.failure("disk");
            fill.fail(format!(
                "cannot make landed slices durable in {}: {e}",
                fill.data_path.display()
            ));
            return;
        }
    }
}

/// Fetches slice `i`, resuming after whatever an earlier attempt wrote; retries with backoff.
async fn fetch_slice(
    fill: &Fill,
    i: usize,
    fetcher: &dyn Fetcher,
    params: FillParams,
    counters: &CacheCounters,
) -> Result<(), FetchError> {
    let start = fill.slice_start(i);
    let end = start + fill.slice_len(i) - 1;
    let mut last = FetchError::new("upstream", "no attempt made");
    for attempt in 0..SLICE_ATTEMPTS {
        if attempt > 0 {
            let backoff =
                Duration::from_millis(250u64 << attempt.min(5)).min(Duration::from_secs(5));
            tokio::time::sleep(backoff).await;
        }
        let mut pos = start + fill.state.lock().unwrap().written[i];
        if pos > end {
            return Ok(());
        }
        let result = async {
            let mut stream = tokio::time::timeout(params.stall_timeout, fetcher.fetch(pos, end))
                .await
                .map_err(|_| FetchError::new("stall", "no response from upstream"))??;
            // Chunks are gathered into larger writes: one blocking-pool hop per WRITE_BATCH
            // rather than per network read.
            let mut pending = Pending::default();
            let received: Result<(), FetchError> = loop {
                match tokio::time::timeout(params.stall_timeout, stream.next()).await {
                    Err(_) => {
                        break Err(FetchError::new(
                            "stall",
                            format!("no data from upstream for {:?}", params.stall_timeout),
                        ))
                    }
                    Ok(None) => break Ok(()),
                    Ok(Some(Err(e))) => break Err(e),
                    Ok(Some(Ok(chunk))) => {
                        if pos + (pending.len + chunk.len()) as u64 > end + 1 {
                            break Err(FetchError::new(
                                "upstream_overrun",
                                "upstream sent more than asked",
                            ));
                        }
                        // `upstream.max_rate`: a slice a client waits on goes first.
                        super::ratelimit::UPSTREAM
                            .take(chunk.len() as u64, fill.demanded(i))
                            .await;
                        pending.push(chunk);
                        if pending.len >= WRITE_BATCH {
                            write_pending(fill, i, start, &mut pos, &mut pending, counters).await?;
                        }
                    }
                }
            };
            // What arrived before an error is good data at the right offset: keep it, so the
            // retry resumes after it.
            write_pending(fill, i, start, &mut pos, &mut pending, counters).await?;
            received?;
            if pos != end + 1 {
                return Err(FetchError::new(
                    "truncated",
                    format!("upstream ended at byte {pos}, expected up to {}", end + 1),
                ));
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) => {
                counters.failure(e.kind);
                tracing::warn!(digest = %fill.digest, slice = i, attempt, "slice fetch failed: {e}");
                if e.kind == "disk" || e.kind == "upstream_not_found" {
                    return Err(e);
                }
                last = e;
            }
        }
    }
    Err(last)
}

/// Received chunks waiting to be written, kept as they came: one `pwritev` writes them all,
/// so no byte is copied in user space on its way to the page cache.
#[derive(Default)]
struct Pending {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Pending {
    fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push(chunk);
        }
    }
}

/// Writes all of `chunks` at `at`, the way `write_all_at` writes one buffer.
fn write_all_vectored_at(
    file: &std::fs::File,
    mut chunks: Vec<Bytes>,
    mut at: u64,
) -> std::io::Result<()> {
    use bytes::Buf;
    let mut first = 0;
    while first < chunks.len() {
        let iov: Vec<std::io::IoSlice> = chunks[first..]
            .iter()
            .take(1024)
            .map(|c| std::io::IoSlice::new(c))
            .collect();
        let offset = libc::off_t::try_from(at).map_err(std::io::Error::other)?;
        let mut n = match nix::sys::uio::pwritev(file, &iov, offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        at += n as u64;
        while n > 0 {
            let c = &mut chunks[first];
            if n >= c.len() {
                n -= c.len();
                first += 1;
            } else {
                c.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

/// Writes gathered bytes at `pos` and tells the waiters. The `pwritev` runs right here on the
/// task that received the bytes: it copies into the page cache and does not wait for the disk
/// (the persister's back-to-back `fdatasync`s keep dirty pages from piling up to the point of
/// write throttling), so a hop to the blocking pool per batch would cost more than it saves.
/// The fill's writers take turns ([`Fill::write_turn`]).
async fn write_pending(
    fill: &Fill,
    i: usize,
    start: u64,
    pos: &mut u64,
    pending: &mut Pending,
    counters: &CacheCounters,
) -> Result<(), FetchError> {
    if pending.len == 0 {
        return Ok(());
    }
    let Pending { chunks, len } = std::mem::take(pending);
    let n = len as u64;
    let turn = fill.write_turn.lock().await;
    write_all_vectored_at(&fill.file, chunks, *pos).map_err(|e| {
        fill.note_io_error(&e);
        FetchError::new("disk", e.to_string())
    })?;
    drop(turn);
    *pos += n;
    fill.state.lock().unwrap().written[i] = *pos - start;
    counters.count(&fill.origin.registry, Event::BytesFromUpstream(n));
    fill.notify();
    Ok(())
}

/// Hashes the contiguous written prefix as it grows; at the end publishes or discards.
async fn hash_and_publish(fill: &Arc<Fill>) -> Result<(), FetchError> {
    // One thread for the whole blob: it hashes from the mapping while the prefix grows and
    // sleeps on the fill's progress when it has caught up, so no byte costs a hand-off
    // between threads, and the hash, the one thing a verified fill cannot spread over cores,
    // runs where the scheduler can keep it on a core of its own.
    struct Stop<'a>(&'a Fill);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            // Also when the driver is dropped unfinished (shutdown): the thread ends.
            let (m, c) = &self.0.hash_wake;
            m.lock().unwrap().1 = true;
            c.notify_all();
        }
    }
    let _stop = Stop(fill);
    let f = fill.clone();
    let digest = tokio::task::spawn_blocking(move || hash_prefix(&f))
        .await
        .map_err(|e| FetchError::new("disk", e.to_string()))??;
    finish(fill, digest).await
}

/// Follows the contiguous written prefix of `fill` to its end; returns the blob's digest.
fn hash_prefix(fill: &Fill) -> Result<String, FetchError> {
    let mut hasher = sha2::Sha256::new();
    let mut pos = 0u64;
    let mut buf = Vec::new();
    while pos < fill.size {
        let seen = fill.hash_wake.0.lock().unwrap().0;
        let avail = {
            let st = fill.state.lock().unwrap();
            if let Outcome::Failed(e) = &st.outcome {
                return Err(FetchError::new("failed", e.clone()));
            }
            fill.contiguous_end(&st, pos)
        };
        if avail > pos {
            let want = (avail - pos).min(4 * READ_CHUNK as u64) as usize;
            if let Some(map) = &fill.mapping {
                hasher.update(&map.bytes()[pos as usize..pos as usize + want]);
                pos += want as u64;
            } else {
                let want = want.min(READ_CHUNK);
                buf.resize(want, 0);
                fill.file
                    .read_exact_at(&mut buf[..want], pos)
                    .map_err(|e| FetchError::new("disk", e.to_string()))?;
                hasher.update(&buf[..want]);
                pos += want as u64;
            }
            continue;
        }
        let (m, c) = &fill.hash_wake;
        let mut w = m.lock().unwrap();
        while w.0 == seen && !w.1 {
            w = c.wait(w).unwrap();
        }
        if w.1 {
            return Err(FetchError::new("failed", "fill dropped"));
        }
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// The verdict on a fully hashed blob: publish it on a match, discard it otherwise.
async fn finish(fill: &Arc<Fill>, got: String) -> Result<(), FetchError> {
    let f = fill.clone();
    if got != fill.digest.as_str() {
        let _ = tokio::task::spawn_blocking(move || {
            let _io = f.map_io.lock().unwrap();
            f.state.lock().unwrap().outcome = Outcome::Failed("digest mismatch".into());
            let _ = std::fs::remove_file(&f.map_path);
            let _ = std::fs::remove_file(&f.data_path);
        })
        .await;
        return Err(FetchError::new(
            "digest_mismatch",
            format!("upstream bytes hash to {got}; discarded"),
        ));
    }
    {
        let mut st = fill.state.lock().unwrap();
        if let Outcome::Failed(e) = &st.outcome {
            return Err(FetchError::new("failed", e.clone()));
        }
        // Every byte is known good now: release the last one before the disk work below.
        st.outcome = Outcome::Verified;
    }
    fill.notify();
    let published = tokio::task::spawn_blocking(move || {
        let r = publish(&f);
        let _io = f.map_io.lock().unwrap();
        let _ = std::fs::remove_file(&f.map_path);
        let mut st = f.state.lock().unwrap();
        match &r {
            Ok(()) => st.outcome = Outcome::Done,
            Err(e) => {
                // Nothing half-published stays behind: the blob may not be on disk whole.
                let _ = std::fs::remove_file(&f.data_path);
                st.outcome = Outcome::Failed(format!("cannot publish: {e}"));
            }
        }
        r
    })
    .await
    .map_err(|e| FetchError::new("disk", e.to_string()))
    .and_then(|r| r.map_err(|e| FetchError::new("disk", format!("cannot publish: {e}"))));
    fill.notify();
    published
}

/// Makes the verified data file durable and moves it into `blobs/`; on failure nothing of it
/// is left in `blobs/`.
fn publish(f: &Fill) -> std::io::Result<()> {
    (f.sync)(&f.file, SyncPoint::Publish)
        .map_err(|e| std::io::Error::new(e.kind(), format!("fsync: {e}")))?;
    std::fs::rename(&f.data_path, &f.blob_path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("rename into blobs/: {e}")))?;
    if let Some(dir) = f.blob_path.parent() {
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            let _ = std::fs::remove_file(&f.blob_path);
            return Err(std::io::Error::new(
                e.kind(),
                format!("fsync of blobs/: {e}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    const SLICE: u64 = 64 * 1024;

    /// Upstream in memory, in 16 KiB chunks. A range that reaches the blob's last byte waits
    /// for a permit of `tail`, so a test can hold the fill short of its end.
    struct Mem {
        data: Bytes,
        tail: Arc<Semaphore>,
    }

    impl Fetcher for Mem {
        fn fetch(
            &self,
            start: u64,
            end: u64,
        ) -> BoxFuture<'static, Result<ByteStream, FetchError>> {
            let b = self.data.slice(start as usize..end as usize + 1);
            let last = end + 1 == self.data.len() as u64;
            let tail = self.tail.clone();
            Box::pin(async move {
                if last {
                    tail.acquire().await.unwrap().forget();
                }
                let chunks: Vec<Result<Bytes, FetchError>> = (0..b.len())
                    .step_by(16 << 10)
                    .map(|i| Ok(b.slice(i..(i + (16 << 10)).min(b.len()))))
                    .collect();
                Ok(futures_util::stream::iter(chunks).boxed())
            })
        }
    }

    /// A gate a sync hook blocks on (on the blocking pool) until the test opens it.
    #[derive(Clone, Default)]
    struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>);

    impl Gate {
        fn wait(&self) {
            let (m, c) = &*self.0;
            let _g = c.wait_while(m.lock().unwrap(), |open| !*open).unwrap();
        }
        fn open(&self) {
            *self.0 .0.lock().unwrap() = true;
            self.0 .1.notify_all();
        }
    }

    struct Setup {
        _tmp: tempfile::TempDir,
        layout: Layout,
        fills: Arc<Fills>,
        counters: Arc<CacheCounters>,
        data: Bytes,
        tail: Arc<Semaphore>,
    }

    /// A cache dir and a blob of a little over five slices.
    fn setup(sync: SyncFn) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path());
        layout.create().unwrap();
        let counters = Arc::new(CacheCounters::default());
        let fills = Fills::new(layout.clone(), Pins::default(), counters.clone(), 4);
        let data: Vec<u8> = (0..5 * SLICE as usize + 1234)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        Setup {
            _tmp: tmp,
            layout,
            fills: Arc::new(fills.with_sync(sync)),
            counters,
            data: data.into(),
            tail: Arc::new(Semaphore::new(1 << 20)),
        }
    }

    impl Setup {
        fn start(&self, digest: &Digest) -> Arc<Fill> {
            let params = FillParams {
                slice_size: SLICE,
                connections: 2,
                stall_timeout: Duration::from_secs(10),
            };
            let origin = Origin {
                registry: "registry.test".into(),
                repository: "library/x".into(),
            };
            let fetcher = Arc::new(Mem {
                data: self.data.clone(),
                tail: self.tail.clone(),
            });
            let size = self.data.len() as u64;
            match self.fills.join(digest, size, origin, params, fetcher) {
                Ok(Joined::Filling(f)) => f,
                _ => panic!("no fill started"),
            }
        }

        fn blobs(&self) -> Vec<String> {
            std::fs::read_dir(self.layout.blobs_dir())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        }

        fn partials(&self) -> Vec<String> {
            std::fs::read_dir(self.layout.partial_dir())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        }

        /// Waits for the fill's driver to finish its bookkeeping after the verdict.
        async fn settled(&self) {
            for _ in 0..2000 {
                if self.fills.snapshot().is_empty() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the fill never ended");
        }

        fn failures(&self, kind: &str) -> u64 {
            self.counters
                .snapshot()
                .failures
                .get(kind)
                .copied()
                .unwrap_or(0)
        }
    }

    /// Reads the fill like a response does; returns how far it got and how it ended.
    async fn read(fill: &Arc<Fill>) -> (u64, std::io::Result<()>) {
        let mut w = fill.waiter(0);
        let mut pos = 0;
        while pos < fill.size {
            match tokio::time::timeout(Duration::from_secs(20), w.available(pos)).await {
                Err(_) => return (pos, Err(std::io::Error::other("timed out"))),
                Ok(Err(e)) => return (pos, Err(e)),
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => pos += n,
            }
        }
        (pos, Ok(()))
    }

    fn sync_with(
        f: impl Fn(&std::fs::File, SyncPoint) -> std::io::Result<()> + Send + Sync + 'static,
    ) -> SyncFn {
        Arc::new(f)
    }

    #[test]
    fn vectored_writes_land_every_chunk_in_order() {
        let tmp = tempfile::tempfile().unwrap();
        // More chunks than one pwritev takes (1024), some empty, of uneven sizes.
        let mut pending = Pending::default();
        let mut want = Vec::new();
        for i in 0..3000usize {
            let c: Vec<u8> = (0..i % 13).map(|j| (i + j) as u8).collect();
            want.extend_from_slice(&c);
            pending.push(Bytes::from(c));
        }
        assert_eq!(pending.len, want.len());
        write_all_vectored_at(&tmp, pending.chunks, 5).unwrap();
        let mut got = vec![0u8; want.len() + 5];
        tmp.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got[..5], &[0; 5]);
        assert_eq!(&got[5..], &want[..]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_last_byte_goes_out_once_verified_before_the_blob_is_durable() {
        let publish = Gate::default();
        let g = publish.clone();
        let s = setup(sync_with(move |file, point| {
            if point == SyncPoint::Publish {
                g.wait();
            }
            real_sync()(file, point)
        }));
        let digest = Digest::of(&s.data);
        let fill = s.start(&digest);
        let (got, end) = read(&fill).await;
        end.unwrap();
        assert_eq!(got, s.data.len() as u64);
        // The whole body went out while publication still waits on its fsync.
        assert!(s.blobs().is_empty(), "{:?}", s.blobs());
        assert_eq!(s.fills.snapshot()[0].state, FillStage::Publishing);
        publish.open();
        fill.finished().await.unwrap();
        assert_eq!(std::fs::read(s.layout.blob_path(&digest)).unwrap(), s.data);
        assert!(s.partials().is_empty(), "{:?}", s.partials());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blob_that_does_not_hash_to_its_digest_never_releases_its_last_byte() {
        let published = Arc::new(AtomicBool::new(false));
        let p = published.clone();
        let s = setup(sync_with(move |file, point| {
            if point == SyncPoint::Publish {
                p.store(true, Ordering::SeqCst);
            }
            real_sync()(file, point)
        }));
        let digest = Digest::of(b"some other blob");
        let fill = s.start(&digest);
        let (got, end) = read(&fill).await;
        assert!(got < s.data.len() as u64);
        let e = end.unwrap_err().to_string();
        assert!(e.contains("digest mismatch"), "{e}");
        assert!(fill.finished().await.is_err());
        // The driver counts the failure after the waiters have seen it.
        s.settled().await;
        assert!(!published.load(Ordering::SeqCst));
        assert!(s.blobs().is_empty(), "{:?}", s.blobs());
        assert_eq!(s.failures("digest_mismatch"), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_persister_failure_fails_the_fill_with_its_cause() {
        let s = setup(sync_with(|file, point| match point {
            SyncPoint::Slices => Err(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            SyncPoint::Publish => real_sync()(file, point),
        }));
        // Hold the last slice back, so the fill cannot be verified before the persister runs.
        s.tail.forget_permits(1 << 20);
        let digest = Digest::of(&s.data);
        let fill = s.start(&digest);
        let e = tokio::time::timeout(Duration::from_secs(20), fill.finished())
            .await
            .unwrap()
            .unwrap_err();
        s.settled().await;
        assert!(
            e.contains("durable") && e.contains("No space left on device"),
            "{e}"
        );
        let (got, end) = read(&fill).await;
        assert!(got < s.data.len() as u64);
        assert!(end.unwrap_err().to_string().contains("No space left"));
        s.tail.add_permits(1 << 20);
        assert!(s.blobs().is_empty(), "{:?}", s.blobs());
        assert_eq!(s.failures("disk"), 1);
        assert_eq!(s.counters.fills_failed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_failure_fails_the_fill_and_leaves_nothing_behind() {
        let s = setup(sync_with(|file, point| match point {
            SyncPoint::Slices => real_sync()(file, point),
            SyncPoint::Publish => Err(std::io::Error::from_raw_os_error(libc::EIO)),
        }));
        let digest = Digest::of(&s.data);
        let fill = s.start(&digest);
        let e = tokio::time::timeout(Duration::from_secs(20), fill.finished())
            .await
            .unwrap()
            .unwrap_err();
        s.settled().await;
        assert!(
            e.contains("cannot publish") && e.contains("Input/output error"),
            "{e}"
        );
        assert!(s.blobs().is_empty(), "{:?}", s.blobs());
        assert!(s.partials().is_empty(), "{:?}", s.partials());
        assert_eq!(s.failures("disk"), 1);
        assert_eq!(s.counters.fills_failed.load(Ordering::Relaxed), 1);
        assert_eq!(s.counters.fills_completed.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_slice_map_names_a_slice_only_after_its_bytes_are_synced() {
        let slices = Gate::default();
        let publish = Gate::default();
        let synced = Arc::new(AtomicBool::new(false));
        let (gs, gp, sy) = (slices.clone(), publish.clone(), synced.clone());
        let s = setup(sync_with(move |file, point| {
            match point {
                SyncPoint::Slices => gs.wait(),
                SyncPoint::Publish => gp.wait(),
            }
            let r = real_sync()(file, point);
            if point == SyncPoint::Slices {
                sy.store(true, Ordering::SeqCst);
            }
            r
        }));
        let digest = Digest::of(&s.data);
        let fill = s.start(&digest);
        let map_path = s
            .layout
            .partial_dir()
            .join(format!("{}.map", digest.file_name()));
        // Every byte landed and went out, yet no fdatasync has returned: the map names nothing,
        // so a kill -9 now resumes by fetching every slice again.
        let (got, end) = read(&fill).await;
        end.unwrap();
        assert_eq!(got, s.data.len() as u64);
        assert!(SliceMap::load(&map_path).unwrap().landed.is_empty());
        // Once the disk has them, they are recorded (and a restart would trust them).
        slices.open();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let m = SliceMap::load(&map_path).unwrap();
            if m.landed.len() == 6 {
                assert!(synced.load(Ordering::SeqCst));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "map never caught up: {m:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let resumed = Fill::open(
            &s.layout,
            &digest,
            s.data.len() as u64,
            fill.origin.clone(),
            FillParams {
                slice_size: SLICE,
                connections: 1,
                stall_timeout: Duration::from_secs(1),
            },
            real_sync(),
        )
        .unwrap();
        assert!(resumed.state.lock().unwrap().durable.iter().all(|d| *d));
        publish.open();
        fill.finished().await.unwrap();
        assert!(!map_path.exists());
    }
}
