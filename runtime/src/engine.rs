//! The shared wasmtime engine: pooling allocator, epoch interruption driven by
//! one ticker thread, and compiled components cached on disk by content hash
//! and engine fingerprint, `<sha256>-<fingerprint>.cwasm` (a restart loads
//! them with `deserialize_file` instead of compiling; a node may also take
//! them from a peer with the same fingerprint, [`RuntimeEngine::check_compiled`]), plus
//! Cranelift's incremental cache on disk: functions already compiled for any
//! earlier component are reused. A JS worker is split ([`crate::snapshot`]):
//! the template every JS worker shares is compiled once per engine
//! fingerprint and loaded once per process, and each worker adds only its
//! snapshot module (its heap, no code), cached beside the components
//! ([`RuntimeEngine::js_component`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use warren_store::blobs::{CompiledDir, compiled_key};
use wasmtime::component::Component;
use wasmtime::{
    CacheStore, Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig,
};

/// Engine settings. Defaults from [`EngineConfig::new`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where compiled components and JS workers' snapshot modules are kept
    /// (`<hash>-<fingerprint>.cwasm`), with Cranelift's per-function
    /// incremental cache under `functions/`.
    pub cache_dir: PathBuf,
    /// Epoch tick: the granularity of CPU-limit checks (default 2 ms).
    pub tick: Duration,
    /// Instances alive at once (default 1000).
    pub max_instances: u32,
    /// Largest linear memory any instance may reach (default 128 MiB; workers
    /// may set lower limits).
    pub max_memory_bytes: usize,
    /// Written pages of each linear memory, up to this many bytes, that are
    /// copied back from the image when an instance ends instead of being
    /// unmapped and faulted in again by the next one (default 1 MiB). Works
    /// with `pagemap_scan`, which finds the written pages.
    pub keep_resident_bytes: usize,
    /// Bytes of each table reset in place instead of unmapped (default 64 KiB).
    pub table_keep_resident_bytes: usize,
    /// Find the pages an instance wrote with Linux's `PAGEMAP_SCAN` ioctl
    /// (6.7+; silently off where unavailable), so only those are reset
    /// (default on). Measured by bench/runtime: hello-world requests/s
    /// 1650 → 3000 on a 2-core machine, the CPU saved being page faults and
    /// TLB-shootdown IPIs. Forced off when the node has swap active at start
    /// (see [`swap_active`]).
    pub pagemap_scan: bool,
    /// A program that compiles components out of process, run as
    /// `<program> compile-component --cache-dir <cache_dir> --out <file>` with
    /// the component on its standard input (the `warren` binary sets itself).
    /// Cranelift's working memory then ends with that process: compiled in
    /// the node, it stayed behind as allocator fragments (bench/runtime:
    /// about 150 MiB in the node process after ten JS deploys). `None`
    /// compiles in this process, with an engine made for the compile.
    pub compiler: Option<PathBuf>,
    /// A prepared toolchain folder ([`crate::prepared`], `warren
    /// prepare-js`): a compiled file of this engine's fingerprint missing
    /// from `cache_dir` is copied from its `compiled/` before it would be
    /// compiled or fetched from a peer.
    pub prepared: Option<PathBuf>,
}

impl EngineConfig {
    /// Defaults, caching compiled code in `cache_dir`.
    pub fn new(cache_dir: PathBuf) -> Self {
        EngineConfig {
            cache_dir,
            tick: Duration::from_millis(2),
            max_instances: 1000,
            max_memory_bytes: 128 << 20,
            keep_resident_bytes: 1 << 20,
            table_keep_resident_bytes: 64 << 10,
            pagemap_scan: true,
            compiler: None,
            prepared: None,
        }
    }
}

/// The engine, its ticker and its compiled-code cache.
pub struct RuntimeEngine {
    engine: Engine,
    config: EngineConfig,
    compiled: CompiledDir,
    fingerprint: String,
    compiles: AtomicU64,
    functions: Arc<FunctionCache>,
    code: crate::code_share::CodeDir,
    pagemap_scan: bool,
    /// Components loaded, by bundle hash, while a worker holds them.
    loaded: Held<Component>,
    /// JS workers' snapshot modules loaded, by hash, while a worker holds them.
    snapshots: Held<Module>,
    /// One turn per component being loaded, by hash: a second load of the
    /// same component in this process (every JS worker's template, when JS
    /// deploys run at once on a node without it) waits for the first and
    /// takes what it loaded instead of compiling and loading it again.
    loading: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// A compiled component, shared by every worker of an engine with the same
/// bundle (copies of one worker hold one loaded component, not one each);
/// it stays loaded while one of them holds it.
///
/// A JS worker's is the template every JS worker shares plus its own
/// snapshot module, which the worker links under
/// [`crate::snapshot::SNAPSHOT_IMPORT`] (see [`RuntimeEngine::js_component`]).
#[derive(Clone)]
pub struct SharedComponent {
    component: Component,
    _held: Arc<()>,
    snapshot: Option<(Module, Arc<()>)>,
}

impl SharedComponent {
    /// The snapshot module the component imports, for a split JS worker.
    pub fn snapshot(&self) -> Option<&Module> {
        self.snapshot.as_ref().map(|(m, _)| m)
    }
}

impl std::ops::Deref for SharedComponent {
    type Target = Component;
    fn deref(&self) -> &Component {
        &self.component
    }
}

/// Things loaded, by hash, for as long as a worker holds them: each entry
/// keeps a weak reference to the token its holders share.
struct Held<T>(Mutex<HashMap<String, (Weak<()>, T)>>);

impl<T: Clone> Held<T> {
    fn new() -> Self {
        Held(Mutex::new(HashMap::new()))
    }

    /// The entry for `hash` and its token, if someone holds it (entries no
    /// one holds are let go).
    fn get(&self, hash: &str) -> Option<(T, Arc<()>)> {
        let mut held = self.0.lock().ok()?;
        held.retain(|_, (token, _)| token.strong_count() > 0);
        let (token, value) = held.get(hash)?;
        Some((value.clone(), token.upgrade()?))
    }

    /// Keeps `value` under `hash`; returns the token that holds it.
    fn insert(&self, hash: String, value: T) -> Arc<()> {
        let token = Arc::new(());
        if let Ok(mut held) = self.0.lock() {
            held.insert(hash, (Arc::downgrade(&token), value));
        }
        token
    }

    /// How many entries someone holds.
    fn count(&self) -> usize {
        self.0
            .lock()
            .map(|h| h.values().filter(|(t, _)| t.strong_count() > 0).count())
            .unwrap_or(0)
    }
}

/// A compiled file in the compiled-code directory (see
/// [`RuntimeEngine::js_compiled_parts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPart {
    /// Its key (`<hash>-<fingerprint>`), as peers are asked for it.
    pub key: String,
    /// A core module (a JS worker's snapshot), not a component.
    pub module: bool,
}

/// The hash a JS worker's snapshot module is cached by: its own key space,
/// so a snapshot's name never equals a component's.
fn snapshot_hash(wasm: &[u8]) -> String {
    hex::encode(
        Sha256::new()
            .chain_update(b"warren-snapshot\0")
            .chain_update(wasm)
            .finalize(),
    )
}

/// Whether `/proc/swaps` text lists an active swap area (zram and the swap
/// behind zswap included): any line after the header.
pub fn swap_active(proc_swaps: &str) -> bool {
    proc_swaps.lines().skip(1).any(|l| !l.trim().is_empty())
}

/// Whether in-place memory reset with `PAGEMAP_SCAN` is safe on this node.
/// wasmtime resets only the written pages the scan reports, and it reports only
/// pages that are present: a written page swapped out at the end of a request
/// would keep its contents for the next request on that slot. So the scan is
/// used only when no swap is active at start (an unreadable `/proc/swaps`
/// counts as swap). Swap turned on later is not seen: restart the node.
fn pagemap_scan_is_safe() -> bool {
    match std::fs::read_to_string("/proc/swaps") {
        Ok(text) => !swap_active(&text),
        Err(e) => {
            tracing::info!(error = %e, "cannot read /proc/swaps; assuming swap is on");
            false
        }
    }
}

impl RuntimeEngine {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(config: EngineConfig) -> anyhow::Result<Arc<Self>> {
        let pagemap_scan = config.pagemap_scan && pagemap_scan_is_safe();
        if pagemap_scan {
            tracing::info!(
                "instance memory reset: pages found written by PAGEMAP_SCAN are restored in place (no swap active)"
            );
        } else if config.pagemap_scan {
            tracing::info!(
                "instance memory reset: without PAGEMAP_SCAN, because swap is active (a swapped-out page would escape the scan)"
            );
        } else {
            tracing::info!("instance memory reset: without PAGEMAP_SCAN (turned off)");
        }
        let mut pool = PoolingAllocationConfig::default();
        // A JS worker's instance is five core instances (the shim, its
        // snapshot, the engine, the WASI adapter, the fixups); one more each
        // for headroom.
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 6)
            .total_memories(config.max_instances * 4)
            .total_tables(config.max_instances * 4)
            .max_memory_size(config.max_memory_bytes)
            .linear_memory_keep_resident(config.keep_resident_bytes)
            .table_keep_resident(config.table_keep_resident_bytes)
            .pagemap_scan(if pagemap_scan {
                wasmtime::Enabled::Auto
            } else {
                wasmtime::Enabled::No
            });
        let functions = Arc::new(FunctionCache::new(config.cache_dir.join("functions"))?);
        functions.trim_in_background();
        let mut c = compile_settings(functions.clone())?;
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&c)
            .map_err(anyhow::Error::from)
            .context("creating the wasmtime engine")?;
        let compiled = CompiledDir::open(&config.cache_dir)
            .with_context(|| format!("cannot create {}", config.cache_dir.display()))?;
        let fingerprint = fingerprint(&engine);
        let code = crate::code_share::CodeDir::open(config.cache_dir.join("code"))?;
        let ticker = engine.weak();
        let tick = config.tick;
        std::thread::Builder::new()
            .name("warren-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(tick);
                }
            })
            .context("starting the epoch ticker")?;
        Ok(Arc::new(RuntimeEngine {
            engine,
            config,
            compiled,
            fingerprint,
            compiles: AtomicU64::new(0),
            functions,
            code,
            pagemap_scan,
            loaded: Held::new(),
            snapshots: Held::new(),
            loading: Mutex::new(HashMap::new()),
        }))
    }

    /// Whether instances' memory is reset with `PAGEMAP_SCAN` (asked for, and
    /// no swap active at start; wasmtime still turns it off on kernels
    /// without the ioctl).
    pub fn pagemap_scan(&self) -> bool {
        self.pagemap_scan
    }

    /// Instances the pool holds at once.
    pub fn max_instances(&self) -> u32 {
        self.config.max_instances
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Epoch ticks per millisecond of CPU budget checks.
    pub fn tick(&self) -> Duration {
        self.config.tick
    }

    /// Components compiled (not loaded from the cache) since start.
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    /// Functions Cranelift took from the incremental cache instead of
    /// compiling them, since start.
    pub fn reused_functions(&self) -> u64 {
        self.functions.hits.load(Ordering::Relaxed)
    }

    /// What compiled code must have been made for to load here: 32 hex
    /// digits of SHA-256 over wasmtime's compatibility hash of this engine
    /// (target, CPU features, compiler flags, tunables, wasm features,
    /// wasmtime version). Engines with equal fingerprints can load each
    /// other's compiled components.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The compiled-code key of bundle `bundle_hash` for this engine
    /// (`<bundle_hash>-<fingerprint>`), as peers are asked for it.
    pub fn compiled_key(&self, bundle_hash: &str) -> String {
        compiled_key(bundle_hash, &self.fingerprint)
    }

    /// The compiled-code directory (also served to peers).
    pub fn compiled_dir(&self) -> &CompiledDir {
        &self.compiled
    }

    /// Whether compiled code for bundle `bundle_hash` is cached here.
    pub fn has_compiled(&self, bundle_hash: &str) -> bool {
        self.has_compiled_key(&self.compiled_key(bundle_hash))
    }

    /// Whether the compiled file `key` is cached here, or prepared
    /// ([`EngineConfig::prepared`]) and so taken from there when loaded.
    pub fn has_compiled_key(&self, key: &str) -> bool {
        self.compiled.path(key).is_ok_and(|p| p.is_file()) || self.prepared_entry(key).is_some()
    }

    /// Where the prepared toolchain folder has compiled file `key` for this
    /// engine: its path, size and SHA-256.
    fn prepared_entry(&self, key: &str) -> Option<(PathBuf, u64, String)> {
        let prepared = self.config.prepared.as_ref()?;
        match crate::prepared::compiled_entry(prepared, &self.fingerprint, key) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, folder = %prepared.display(), "cannot read the prepared toolchain's stamp");
                None
            }
        }
    }

    /// Copies compiled file `key` from the prepared toolchain folder to
    /// `path` (its place in the cache) when the cache lacks it and the
    /// folder's stamp lists it; the copy is kept only if it matches the stamp.
    fn take_prepared(&self, key: &str, path: &std::path::Path) {
        if path.exists() {
            return;
        }
        let Some((from, len, sha)) = self.prepared_entry(key) else {
            return;
        };
        match crate::prepared::copy_checked(&from, path, len, &sha) {
            Ok(true) => tracing::info!(key, "took compiled code from the prepared toolchain"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "compiled code from the prepared toolchain not taken; compiling it")
            }
        }
    }

    /// The compiled files a JS worker with built component `wasm` loads from
    /// when it splits ([`RuntimeEngine::js_component`]): the template all JS
    /// workers share, then its own snapshot module. `None` when it does not
    /// split (it loads from its bundle's own file).
    pub fn js_compiled_parts(&self, wasm: &[u8]) -> Option<[CompiledPart; 2]> {
        let split = crate::snapshot::split(wasm).ok()??;
        Some([
            CompiledPart {
                key: self.compiled_key(&content_hash(&split.template)),
                module: false,
            },
            CompiledPart {
                key: self.compiled_key(&snapshot_hash(&split.snapshot)),
                module: true,
            },
        ])
    }

    /// Checks that the file at `path` (compiled code a peer sent) loads into
    /// this engine as a component; wasmtime refuses a file that is not one
    /// or was made by an incompatible engine. Call it before keeping the file
    /// under [`RuntimeEngine::compiled_key`].
    ///
    /// Compiled code is native code run as it is: only files from this
    /// node's own cache, from an authenticated cluster peer (trusted like
    /// the store) or from the installation's prepared toolchain folder
    /// ([`EngineConfig::prepared`], trusted like the binary) may reach this,
    /// never bytes from a client.
    pub fn check_compiled(&self, path: &std::path::Path) -> anyhow::Result<()> {
        self.check_compiled_part(path, false)
    }

    /// [`RuntimeEngine::check_compiled`] for a [`CompiledPart`]: a core
    /// module when `module`, else a component.
    pub fn check_compiled_part(&self, path: &std::path::Path, module: bool) -> anyhow::Result<()> {
        // SAFETY: the file comes from a node of this cluster, which is trusted
        // like the store (see `check_compiled`); wasmtime checks its format
        // and the engine's compatibility, and the file is not modified while
        // mapped (it is renamed into the cache, never rewritten in place).
        let loaded = if module {
            unsafe { Module::deserialize_file(&self.engine, path) }.map(drop)
        } else {
            unsafe { Component::deserialize_file(&self.engine, path) }.map(drop)
        };
        loaded
            .map_err(anyhow::Error::from)
            .context("compiled code from a peer does not load into this engine")
    }

    /// The component for `wasm`: the one already loaded for a worker with
    /// the same bundle, else from the on-disk cache when this engine (or a
    /// peer with the same fingerprint) has compiled it before, else compiled
    /// and cached. (A component no worker holds any more is let go at the
    /// next call.)
    pub fn component(&self, wasm: &[u8]) -> anyhow::Result<SharedComponent> {
        let hash = content_hash(wasm);
        if let Some(shared) = self.loaded_component(&hash) {
            return Ok(shared);
        }
        // One load of a component at a time: a second load of the same one
        // (every JS worker's template, when JS deploys run at once) waits
        // for the first and then takes what it loaded, instead of compiling
        // and loading it again.
        let turn = self
            .loading
            .lock()
            .map(|mut l| l.entry(hash.clone()).or_default().clone())
            .ok();
        // (A load that panicked leaves no file behind: the next one compiles.)
        let in_turn = turn
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(|e| e.into_inner()));
        let shared = match self.loaded_component(&hash) {
            Some(shared) => Ok(shared),
            None => self.load(&hash, wasm).map(|component| SharedComponent {
                _held: self.loaded.insert(hash.clone(), component.clone()),
                component,
                snapshot: None,
            }),
        };
        drop(in_turn);
        if let (Some(turn), Ok(mut loading)) = (turn, self.loading.lock()) {
            // Ours and the map's: nobody else waits.
            if Arc::strong_count(&turn) <= 2 {
                loading.remove(&hash);
            }
            drop(turn);
            drop(loading);
        }
        shared
    }

    /// The component with content hash `hash` if a worker holds it loaded.
    fn loaded_component(&self, hash: &str) -> Option<SharedComponent> {
        let (component, held) = self.loaded.get(hash)?;
        Some(SharedComponent {
            component,
            _held: held,
            snapshot: None,
        })
    }

    /// The component for a JS worker's `wasm` (as [`RuntimeEngine::component`]),
    /// split into the template all JS workers share and the worker's own
    /// snapshot ([`crate::snapshot`]): the template is compiled once per
    /// engine fingerprint (once per process at most, where several runtime
    /// processes find it missing at once) and loaded once per process, so a
    /// new or edited JS worker compiles only its snapshot module (no
    /// functions: its memory image).
    /// A component that does not split, or whose template does not load, is
    /// loaded whole.
    pub fn js_component(&self, wasm: &[u8]) -> anyhow::Result<SharedComponent> {
        match crate::snapshot::split(wasm) {
            Ok(Some(split)) => {
                let parts = self
                    .component(&split.template)
                    .and_then(|template| Ok((template, self.snapshot_module(&split.snapshot)?)));
                match parts {
                    Ok((template, snapshot)) => {
                        return Ok(SharedComponent {
                            snapshot: Some(snapshot),
                            ..template
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "the JS worker's split parts do not load; loading it whole")
                    }
                }
            }
            Ok(None) => {
                tracing::info!("the JS worker's component does not split; loading it whole")
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the JS worker's component does not split; loading it whole")
            }
        }
        self.component(wasm)
    }

    /// The snapshot module `wasm` of a JS worker: already loaded for another
    /// worker, else from the cache, else compiled (here: it has no functions)
    /// and cached. It is always served from its file, so its memory image is
    /// page cache shared by every instance and process.
    fn snapshot_module(&self, wasm: &[u8]) -> anyhow::Result<(Module, Arc<()>)> {
        let hash = snapshot_hash(wasm);
        if let Some(loaded) = self.snapshots.get(&hash) {
            return Ok(loaded);
        }
        let path = self.compiled.path(&self.compiled_key(&hash))?;
        // SAFETY: as in `load_file`: written by `Module::serialize` of this
        // engine (below) into this runtime's compiled-code directory (which
        // otherwise only takes files from trusted cluster peers and the
        // installation's prepared toolchain folder), renamed
        // into place and never rewritten; wasmtime checks compatibility.
        let load = || unsafe { Module::deserialize_file(&self.engine, &path) };
        let module = match path.exists().then(load) {
            Some(Ok(m)) => m,
            cached => {
                if let Some(Err(e)) = cached {
                    tracing::warn!(error = %e, "cached snapshot module unusable; compiling it again");
                }
                let bytes = Module::new(&self.engine, wasm)
                    .and_then(|m| m.serialize())
                    .map_err(anyhow::Error::from)
                    .context("compiling the worker's snapshot")?;
                let tmp = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
                let written =
                    std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path));
                if let Err(e) = written {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e).with_context(|| format!("writing {}", path.display()));
                }
                load().map_err(anyhow::Error::from)?
            }
        };
        let held = self.snapshots.insert(hash, module.clone());
        Ok((module, held))
    }

    /// Components loaded now (each held by at least one worker).
    pub fn components_loaded(&self) -> usize {
        self.loaded.count()
    }

    /// Loads the compiled component of bundle `hash` (`wasm`) from the
    /// cache, or compiles and caches it.
    fn load(&self, hash: &str, wasm: &[u8]) -> anyhow::Result<Component> {
        let key = self.compiled_key(hash);
        let path = self.compiled.path(&key)?;
        self.take_prepared(&key, &path);
        if path.exists() {
            match self.load_file(&path) {
                Ok(c) => return Ok(c),
                Err(e) => tracing::warn!(error = %e, "cached component unusable; recompiling"),
            }
        }
        // A unique temporary name: other processes may be writing the same entry.
        let tmp = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
        let compiled = self.compile_into(wasm, &tmp);
        if compiled.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        compiled?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        std::fs::rename(&tmp, &path)?;
        // Each compile adds a few hundred entries, even for a bundle
        // compiled before (their keys are not stable).
        self.functions.trim_in_background();
        // Serve from the file just written rather than from compiled code in
        // this process's memory: mapped from the file, a worker's code and
        // memory image are page cache, resident only where an instance touched
        // them and shared with every other mapping of the file, instead of
        // tens of MiB of anonymous memory per JS worker for as long as it is
        // deployed (bench/runtime: 100 different idle JS workers).
        match self.load_file(&path) {
            Ok(mapped) => Ok(mapped),
            Err(e) => {
                tracing::warn!(error = %e, "freshly compiled file unusable; compiling with the serving engine");
                let component = Component::new(&self.engine, wasm)
                    .map_err(anyhow::Error::from)
                    .context("compiling the worker");
                release_freed_memory();
                component
            }
        }
    }

    /// Compiles `wasm` into the file `out`: in the configured compile
    /// process ([`EngineConfig::compiler`]), else (or when it cannot be
    /// started) here.
    fn compile_into(&self, wasm: &[u8], out: &std::path::Path) -> anyhow::Result<()> {
        if let Some(program) = &self.config.compiler {
            match compile_process(program, &self.config.cache_dir, wasm, out) {
                Err(CompileFailure::NotStarted(e)) => {
                    tracing::warn!(error = %e, program = %program.display(), "cannot start the compile process; compiling in the node");
                }
                Err(CompileFailure::Failed(e)) => return Err(e),
                Ok(()) => return Ok(()),
            }
        }
        compile_with(self.functions.clone(), wasm, out)
    }

    /// Loads the compiled component in `path` and maps its machine code
    /// from the file shared by every component with the same code (see
    /// [`crate::code_share`]); if that fails, the component is loaded again
    /// and serves from its own file.
    fn load_file(&self, path: &std::path::Path) -> anyhow::Result<Component> {
        // SAFETY: the file was written by `Component::serialize` of an
        // engine with this fingerprint, here, on a cluster peer (trusted
        // like the store, see `check_compiled`) or by `warren prepare-js`
        // for the installation (trusted like the binary; copied in only when
        // it matches the prepared folder's stamp), into a directory only this
        // runtime writes, and is never rewritten in place (entries are
        // renamed in); wasmtime checks the engine's compatibility on load.
        let load = || unsafe { Component::deserialize_file(&self.engine, path) };
        let component = load().map_err(anyhow::Error::from)?;
        match self.code.share(&component, path) {
            Ok(_) => Ok(component),
            Err(e) => {
                tracing::warn!(error = %e, file = %path.display(), "machine code not shared; the component maps its own");
                drop(component);
                load().map_err(anyhow::Error::from)
            }
        }
    }
}

/// Longest a compile process may run (a cold StarlingMonkey compile takes
/// about 10 s on 2 cores).
const COMPILE_TIMEOUT: Duration = Duration::from_secs(300);

/// Most bytes of a compile process's standard error kept.
const COMPILE_STDERR_BYTES: u64 = 64 * 1024;

/// Why [`compile_process`] gave no file.
enum CompileFailure {
    /// The program could not be run.
    NotStarted(std::io::Error),
    /// It ran and failed: the error to report.
    Failed(anyhow::Error),
}

/// Runs `program compile-component` on `wasm`, writing `out`. The process
/// gets no environment, dies with the thread that started it, and is killed
/// after [`COMPILE_TIMEOUT`]. A compile error is reported as the process's
/// `error: …` line (as a compile here would report it); any other failure
/// (a crash, a signal) as a plain "the compile process failed", with what it
/// printed logged, not shown to the uploader.
fn compile_process(
    program: &std::path::Path,
    cache_dir: &std::path::Path,
    wasm: &[u8],
    out: &std::path::Path,
) -> Result<(), CompileFailure> {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let mut command = Command::new(program);
    command
        .arg("compile-component")
        .arg("--cache-dir")
        .arg(cache_dir)
        .arg("--out")
        .arg(out)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and
    // exec here.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(CompileFailure::NotStarted)?;
    let stderr = child.stderr.take().map(|e| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = e.take(COMPILE_STDERR_BYTES).read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    });
    let sent = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(wasm),
        None => Err(std::io::Error::other("no standard input")),
    };
    let deadline = std::time::Instant::now() + COMPILE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("took longer than {} s", COMPILE_TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("cannot be waited for: {e}")),
        }
    };
    let said = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    let failed = |why: String| {
        tracing::warn!(%why, stderr = %said, "the compile process failed");
        CompileFailure::Failed(anyhow::anyhow!(
            "compiling the worker: the compile process {why}"
        ))
    };
    let status = status.map_err(failed)?;
    if !status.success() {
        // (`warren` prints a failure as `error: <message>`.)
        if status.code() == Some(1)
            && let Some(error) = said.lines().rev().find_map(|l| l.strip_prefix("error: "))
        {
            let error: String = error.chars().take(4096).collect();
            return Err(CompileFailure::Failed(anyhow::anyhow!(error)));
        }
        return Err(failed(format!("ended ({status})")));
    }
    sent.map_err(|e| failed(format!("did not take the component: {e}")))?;
    Ok(())
}

/// The engine settings that decide compiled code (everything but the
/// instance pool), with Cranelift's incremental cache in `functions`.
fn compile_settings(functions: Arc<FunctionCache>) -> anyhow::Result<Config> {
    let mut c = Config::new();
    c.epoch_interruption(true)
        .wasm_component_model(true)
        .enable_incremental_compilation(functions)
        .map_err(anyhow::Error::from)?;
    Ok(c)
}

/// Compiles `wasm` as a [`RuntimeEngine`] with cache directory `cache_dir`
/// would (same settings, same incremental cache) into the file `out`, with an
/// engine made for this compile and dropped after it. The body of
/// `warren compile-component`.
pub fn compile_component(
    cache_dir: &std::path::Path,
    wasm: &[u8],
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let functions = Arc::new(FunctionCache::new(cache_dir.join("functions"))?);
    compile_with(functions, wasm, out)
}

/// [`compile_component`] with the incremental cache `functions`.
fn compile_with(
    functions: Arc<FunctionCache>,
    wasm: &[u8],
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let engine = Engine::new(&compile_settings(functions)?)
        .map_err(anyhow::Error::from)
        .context("creating the wasmtime engine")?;
    let component = Component::new(&engine, wasm)
        .map_err(anyhow::Error::from)
        .context("compiling the worker")?;
    let bytes = component.serialize().map_err(anyhow::Error::from);
    drop(component);
    drop(engine);
    let written = bytes
        .and_then(|b| std::fs::write(out, b).with_context(|| format!("writing {}", out.display())));
    release_freed_memory();
    written
}

/// Hands memory the allocator holds but no longer uses back to the kernel.
/// A component's compile allocates hundreds of MiB across Cranelift's
/// threads; glibc keeps what they freed in per-thread arenas, so without this
/// every deployed JS worker left about 25 MiB of anonymous memory behind in
/// the node (bench/runtime: 100 different idle JS workers).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases free memory of glibc's arenas; it
    // takes the arenas' own locks and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Cranelift's incremental cache kept as one file per compiled function
/// (named by the hash of Cranelift's key), shared by every engine that uses
/// the same cache directory.
#[derive(Debug)]
struct FunctionCache {
    dir: PathBuf,
    hits: AtomicU64,
}

/// The most the incremental cache keeps on disk. One JS engine's functions
/// take about 100 MiB; entries no compile has used for longest go first
/// (those of an older wasmtime, and the few functions whose keys differ
/// from compile to compile).
pub const FUNCTION_CACHE_BYTES: u64 = 1 << 30;

/// How stale an entry's modification time may get before a hit renews it
/// (it is the entry's last use, for [`FunctionCache::trim`]).
const FUNCTION_USE_GRAIN: Duration = Duration::from_secs(3600);

impl FunctionCache {
    /// Removes the entries used longest ago (by modification time, which a
    /// hit renews hourly) until the cache holds under three quarters of
    /// `max_bytes`; nothing while it holds at most `max_bytes`. Processes
    /// trimming at once each count what the others removed, so together
    /// they remove no more than one would.
    fn trim(&self, max_bytes: u64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                if !meta.is_file() {
                    return None;
                }
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        if total <= max_bytes {
            return;
        }
        files.sort_by_key(|f| f.0);
        let goal = max_bytes / 4 * 3;
        for (_, len, path) in files {
            if total <= goal {
                break;
            }
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {}
                _ => total = total.saturating_sub(len),
            }
        }
    }

    /// [`FunctionCache::trim`] to [`FUNCTION_CACHE_BYTES`] on a thread of
    /// its own: walking ~20 000 entries takes up to about 0.2 s, which
    /// neither a deploy nor the node's start should wait for.
    fn trim_in_background(self: &Arc<Self>) {
        let cache = self.clone();
        let spawned = std::thread::Builder::new()
            .name("warren-cache-trim".into())
            .spawn(move || cache.trim(FUNCTION_CACHE_BYTES));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start trimming the function cache");
        }
    }

    fn new(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        warren_store::blobs::remove_stale_temporaries(&dir);
        Ok(FunctionCache {
            dir,
            hits: AtomicU64::new(0),
        })
    }

    fn path(&self, key: &[u8]) -> PathBuf {
        self.dir.join(hex::encode(Sha256::digest(key)))
    }
}

impl CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
        use std::io::Read;
        let mut file = std::fs::File::open(self.path(key)).ok()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        // Marks the entry used, so that trimming keeps it.
        let now = std::time::SystemTime::now();
        let stale = file.metadata().and_then(|m| m.modified()).is_ok_and(|m| {
            now.duration_since(m)
                .is_ok_and(|age| age > FUNCTION_USE_GRAIN)
        });
        if stale {
            let _ = file.set_modified(now);
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(bytes.into())
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let path = self.path(key);
        let tmp = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
        std::fs::write(&tmp, value)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_ok()
    }
}

/// Hex SHA-256 of a component: its cache key and deployed version tag.
pub fn content_hash(wasm: &[u8]) -> String {
    hex::encode(Sha256::digest(wasm))
}

/// A [`std::hash::Hasher`] feeding SHA-256, so a `Hash` value gives the same
/// digest in every process (unlike the standard library's seeded hashers).
struct Sha256Hasher(Sha256);

impl std::hash::Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }
}

/// See [`RuntimeEngine::fingerprint`].
fn fingerprint(engine: &Engine) -> String {
    use std::hash::Hash;
    let mut h = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(&h.0.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_function_cache_drops_what_was_used_longest_ago_once_over_its_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = FunctionCache::new(dir.path().to_owned()).expect("cache");
        let now = std::time::SystemTime::now();
        // Ten entries of 100 bytes, entry i last used i hours ago.
        for i in 0..10u64 {
            let f = std::fs::File::create(dir.path().join(format!("e{i}"))).expect("create");
            f.set_len(100).expect("len");
            let read = now - Duration::from_secs(3600 * i);
            f.set_times(
                std::fs::FileTimes::new()
                    .set_accessed(read)
                    .set_modified(read),
            )
            .expect("times");
        }
        let left = || warren_testkit::file_names(dir.path());
        cache.trim(1000);
        assert_eq!(left().len(), 10, "at its limit: nothing goes");
        // A hit on the oldest entry makes it the newest.
        assert!(cache.get(b"k").is_none());
        std::fs::rename(dir.path().join("e9"), cache.path(b"k")).expect("rename");
        assert_eq!(cache.get(b"k").map(|b| b.len()), Some(100));
        cache.trim(999);
        let hit = cache.path(b"k");
        let mut want = vec!["e0", "e1", "e2", "e3", "e4", "e5"];
        want.push(hit.file_name().and_then(|n| n.to_str()).expect("name"));
        want.sort();
        assert_eq!(left(), want);
    }

    #[test]
    fn swap_is_active_when_proc_swaps_lists_an_area() {
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert!(!swap_active(header));
        assert!(!swap_active(""));
        assert!(!swap_active(&format!("{header}\n")));
        assert!(swap_active(&format!(
            "{header}/swapfile                               file\t\t2097148\t\t0\t\t-2\n"
        )));
        assert!(swap_active(&format!(
            "{header}/dev/zram0                              partition\t8388604\t\t1024\t\t100\n\
             /dev/sda2                               partition\t1048572\t\t0\t\t-2\n"
        )));
    }
}
