//! Locked, non-dumpable, zeroizing memory for key material, and process hardening.
//!
//! This is the only module of the crate that uses `unsafe`: it calls `mmap`, `mlock`, `madvise`,
//! `munlock`, `munmap`, `prctl`, `setrlimit` and `malloc_trim` through `libc`. Every block states
//! why it is sound.
#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::ptr::NonNull;

use zeroize::Zeroize;

/// Whether key memory must be locked (the default) or may fall back to ordinary memory
/// (`disable_mlock = true`, for development machines only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryPolicy {
    RequireLocked,
    AllowUnlocked,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    #[error(
        "cannot lock {len} bytes of memory for key material ({source}); raise the memlock limit \
         (systemd: LimitMEMLOCK=1M; shell: ulimit -l 1024) or grant CAP_IPC_LOCK, or set \
         disable_mlock = true in the config on a development machine only"
    )]
    Lock { len: usize, source: io::Error },
    #[error("cannot map memory for key material: {0}")]
    Map(io::Error),
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size <= 0 { 4096 } else { size as usize }
}

/// A fixed-size buffer of secret bytes in its own anonymous mapping: locked in RAM (never swapped),
/// excluded from core dumps, and overwritten with zeros before it is unmapped.
///
/// It deliberately implements neither `Debug` nor `Clone`.
pub struct LockedBytes {
    ptr: NonNull<u8>,
    len: usize,
    map_len: usize,
    locked: bool,
}

// SAFETY: LockedBytes owns its mapping exclusively; no aliasing pointer escapes except through
// `&self`/`&mut self` borrows, so moving it to or sharing it with another thread is sound.
unsafe impl Send for LockedBytes {}
// SAFETY: as above; shared access only hands out `&[u8]`.
unsafe impl Sync for LockedBytes {}

impl LockedBytes {
    /// Allocates `len` zeroed bytes of locked memory.
    pub fn zeroed(len: usize, policy: MemoryPolicy) -> Result<Self, MemoryError> {
        let page = page_size();
        let map_len = len.max(1).div_ceil(page) * page;
        // SAFETY: an anonymous private mapping with a null hint has no preconditions; the result
        // is checked against MAP_FAILED before use.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(MemoryError::Map(io::Error::last_os_error()));
        }
        let Some(ptr) = NonNull::new(raw.cast::<u8>()) else {
            return Err(MemoryError::Map(io::Error::other("mmap returned null")));
        };
        let mut this = LockedBytes {
            ptr,
            len,
            map_len,
            locked: false,
        };
        // SAFETY: [raw, raw + map_len) is the mapping created above.
        unsafe {
            // Best effort: a kernel without MADV_DONTDUMP still gets RLIMIT_CORE=0 and
            // PR_SET_DUMPABLE=0 from `harden_process`.
            libc::madvise(raw, map_len, libc::MADV_DONTDUMP);
        }
        // SAFETY: as above.
        let rc = unsafe { libc::mlock(raw, map_len) };
        if rc == 0 {
            this.locked = true;
        } else if policy == MemoryPolicy::RequireLocked {
            // `this` is dropped here and unmaps the region.
            return Err(MemoryError::Lock {
                len: map_len,
                source: io::Error::last_os_error(),
            });
        }
        Ok(this)
    }

    /// Copies `src` into a new locked buffer. The caller remains responsible for zeroizing `src`.
    pub fn from_slice(src: &[u8], policy: MemoryPolicy) -> Result<Self, MemoryError> {
        let mut this = Self::zeroed(src.len(), policy)?;
        this.as_mut_slice().copy_from_slice(src);
        Ok(this)
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for map_len >= len bytes for the lifetime of self, initialised
        // (anonymous mappings are zero-filled), and only mutated through &mut self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice; &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the pages are really locked (false only under `MemoryPolicy::AllowUnlocked`).
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl Drop for LockedBytes {
    fn drop(&mut self) {
        // SAFETY: the whole mapping is ours and initialised; zeroize uses volatile writes that the
        // optimiser cannot remove.
        let all = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.map_len) };
        all.zeroize();
        let raw = self.ptr.as_ptr().cast::<libc::c_void>();
        // SAFETY: raw/map_len describe the mapping created in `zeroed`; it is not used afterwards.
        unsafe {
            if self.locked {
                libc::munlock(raw, self.map_len);
            }
            libc::munmap(raw, self.map_len);
        }
    }
}

/// A value in its own locked, non-dumpable mapping, dropped in place and then zeroized with the
/// mapping. Meant for key schedules whose type keeps its whole state inline, without pointers to
/// heap memory (an HMAC key's precomputed inner and outer hash states): what such a value holds
/// lives only in locked memory. (The value is built on the stack and moved in; the stack slot it
/// passed through is overwritten by later calls, as with any key computed on the stack.)
pub struct Locked<T> {
    mem: LockedBytes,
    _value: std::marker::PhantomData<T>,
}

// SAFETY: Locked<T> owns its T exclusively (like a Box<T>), so it may move to or be shared with
// another thread exactly when T may.
unsafe impl<T: Send> Send for Locked<T> {}
// SAFETY: as above; shared access only hands out `&T`.
unsafe impl<T: Sync> Sync for Locked<T> {}

impl<T> Locked<T> {
    pub fn new(value: T, policy: MemoryPolicy) -> Result<Locked<T>, MemoryError> {
        let mem = LockedBytes::zeroed(std::mem::size_of::<T>().max(1), policy)?;
        if std::mem::align_of::<T>() > page_size() {
            return Err(MemoryError::Map(io::Error::other(
                "alignment larger than a page",
            )));
        }
        // SAFETY: the mapping is page-aligned (mmap), so aligned for T (checked above), at least
        // size_of::<T>() bytes long, writable and owned by `mem` alone; nothing was there to drop.
        unsafe { std::ptr::write(mem.ptr.as_ptr().cast::<T>(), value) };
        Ok(Locked {
            mem,
            _value: std::marker::PhantomData,
        })
    }
}

impl<T> std::ops::Deref for Locked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: `new` wrote a valid T at the start of the mapping, which lives as long as self
        // and is only reached through self.
        unsafe { &*self.mem.ptr.as_ptr().cast::<T>() }
    }
}

impl<T> Drop for Locked<T> {
    fn drop(&mut self) {
        // SAFETY: the T written by `new` is still there and is dropped exactly once, here; the
        // mapping is zeroized and unmapped afterwards by `mem`'s own Drop.
        unsafe { std::ptr::drop_in_place(self.mem.ptr.as_ptr().cast::<T>()) };
    }
}

impl fmt::Debug for LockedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockedBytes([REDACTED; {}])", self.len)
    }
}

/// Makes the process non-dumpable (no core files, no ptrace by unprivileged peers, /proc/PID/mem
/// closed to other users), sets RLIMIT_CORE to 0 and the umask to 0077.
pub fn harden_process() -> io::Result<()> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid, initialised rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: PR_SET_DUMPABLE takes an integer argument and no pointers.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: umask only sets the process's file mode creation mask. Files the daemon creates are
    // private unless it widens them explicitly (the admin socket with allowed groups).
    unsafe { libc::umask(0o077) };
    Ok(())
}

/// Raises the soft descriptor limit (RLIMIT_NOFILE) to the hard limit, as Go's runtime does, and
/// returns the soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid rlimit struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads a valid, initialised rlimit struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// One mapping of /proc/self/smaps, as far as [`release_file_pages`] needs it.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    perms: String,
    inode: u64,
    rss_kb: u64,
    /// Private (copied-on-write), swapped and locked pages: any of them makes the mapping differ
    /// from its file, or unfit for the advice.
    anonymous_kb: u64,
    swap_kb: u64,
    locked_kb: u64,
}

impl Mapping {
    /// A private, read-only mapping of a file whose every resident page is still the file's own:
    /// dropping its pages loses nothing, the next access maps the same bytes from the page cache.
    fn is_unchanged_file_mapping(&self) -> bool {
        let p = self.perms.as_bytes();
        self.inode != 0
            && p.len() == 4
            && p[0] == b'r'
            && p[1] != b'w'
            && p[3] == b'p'
            && self.rss_kb > 0
            && self.anonymous_kb == 0
            && self.swap_kb == 0
            && self.locked_kb == 0
    }
}

fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let Some(first) = f.next() else { continue };
        let range = first
            .split_once('-')
            .map(|(a, b)| (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)));
        if let Some((Ok(start), Ok(end))) = range {
            let perms = f.next().unwrap_or_default().to_string();
            let inode = f.nth(2).and_then(|i| i.parse().ok()).unwrap_or(0);
            out.push(Mapping {
                start,
                end,
                perms,
                inode,
                rss_kb: 0,
                // Unknown until their lines are read: a mapping without them is left alone.
                anonymous_kb: u64::MAX,
                swap_kb: u64::MAX,
                locked_kb: u64::MAX,
            });
            continue;
        }
        let Some(m) = out.last_mut() else { continue };
        let kb = || {
            f.clone()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        };
        match first {
            "Rss:" => m.rss_kb = kb(),
            "Anonymous:" => m.anonymous_kb = kb(),
            "Swap:" => m.swap_kb = kb(),
            "Locked:" => m.locked_kb = kb(),
            _ => {}
        }
    }
    out
}

/// Drops this process's resident pages of read-only file mappings (the code and constants of the
/// binary, the PKCS#11 module and the libraries), and returns how many KiB were resident in them.
/// The daemon calls it when it is quiet after start-up or a burst (`app::release_when_quiet`):
/// start-up runs code the daemon does not run again until the next unseal or restart (the
/// self-tests, the config parser, the module's initialisation), and the kernel maps file pages in
/// 64 KiB windows around each fault; after this only what serving touches comes back, from the
/// page cache, as minor faults. Only mappings whose pages are all still the file's
/// are advised (no copied-on-write, swapped or locked page: relocated data, a debugger's or a
/// uprobe's breakpoint, are left alone). Best effort: a mapping the kernel refuses is skipped.
pub fn release_file_pages() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for m in parse_smaps(&text)
        .iter()
        .filter(|m| m.is_unchanged_file_mapping())
    {
        // SAFETY: the range is one whole mapping of this process, read from smaps just now, that
        // is private, not writable and holds no page that differs from its file (no anonymous,
        // swapped or locked page). MADV_DONTNEED on such a mapping only unmaps its pages: the next
        // access faults the same bytes back from the file, as after the kernel's own reclaim. No
        // Rust object lives in it (they live on the heap, the stacks and writable mappings).
        let rc = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            released = m.rss_kb.saturating_add(released);
        }
    }
    Ok(released)
}

/// Returns the heap's free memory to the kernel (glibc's `malloc_trim`): freed blocks that a burst
/// of requests left in the allocator's arenas (already wiped, `WipingAllocator`). Whether any was.
pub fn trim_heap() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim only takes the allocator's own locks and releases free pages; it
        // touches no allocated block.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

/// Whether the process is currently dumpable (PR_GET_DUMPABLE).
pub fn is_dumpable() -> bool {
    // SAFETY: PR_GET_DUMPABLE takes no pointer arguments.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) != 0 }
}

/// The daemon's global allocator: the system allocator, except that every block is wiped
/// (`explicit_bzero`) before it is freed, and a reallocation that cannot stay in its block copies
/// to a new one and wipes the old one. Plaintexts, tokens and data keys pass through buffers this crate does not own (hyper's
/// read and write buffers, rustls's record buffers, serde's scratch space); with this allocator
/// none of them survives in freed heap, where a core dump or a later allocation could find it.
/// What is still allocated is still there: a live connection's buffers hold its last request until
/// the connection's next bytes or its end.
pub struct WipingAllocator;

// SAFETY: every method forwards to `std::alloc::System` with the caller's layout (and, for
// realloc, a layout of the same alignment and the requested size, as `GlobalAlloc::realloc`
// requires); the only addition is wiping `layout.size()` bytes of a block the caller owns and is
// giving back, which `explicit_bzero` does without reading it.
unsafe impl std::alloc::GlobalAlloc for WipingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract (non-zero size), passed on unchanged.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` was allocated by this allocator with `layout`, so `layout.size()` bytes at
        // `ptr` are writable and owned by the caller until the System dealloc below.
        unsafe {
            libc::explicit_bzero(ptr.cast(), layout.size());
            std::alloc::System.dealloc(ptr, layout);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator (malloc or an aligned malloc for the System
        // allocator), so malloc_usable_size may be asked about it; when the block already holds
        // `new_size` bytes it is kept, and a shrink wipes the bytes it gives up. Otherwise the
        // caller guarantees `new_size` is non-zero and, rounded up to `layout.align()`, does not
        // overflow isize, so the new layout is valid; the copy stays within both blocks; the old
        // block is then wiped and freed by `dealloc` with its own layout.
        unsafe {
            if new_size <= libc::malloc_usable_size(ptr.cast()) {
                if new_size < layout.size() {
                    libc::explicit_bzero(ptr.add(new_size).cast(), layout.size() - new_size);
                }
                return ptr;
            }
            let new_layout =
                std::alloc::Layout::from_size_align_unchecked(new_size, layout.align());
            let new = std::alloc::System.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_value_is_dropped_in_place_and_its_pages_are_locked() {
        struct Counted(#[allow(dead_code)] std::sync::Arc<()>, [u8; 64]);
        let count = std::sync::Arc::new(());
        let v = Locked::new(
            Counted(count.clone(), [9u8; 64]),
            MemoryPolicy::AllowUnlocked,
        )
        .unwrap();
        assert_eq!(v.1, [9u8; 64]);
        assert_eq!(std::sync::Arc::strong_count(&count), 2);
        drop(v);
        assert_eq!(
            std::sync::Arc::strong_count(&count),
            1,
            "the value was not dropped"
        );
    }

    #[test]
    fn locked_bytes_roundtrip_and_redacted_debug() {
        let b = LockedBytes::from_slice(&[7u8; 32], MemoryPolicy::AllowUnlocked).unwrap();
        assert_eq!(b.as_slice(), &[7u8; 32]);
        assert_eq!(b.len(), 32);
        assert!(!format!("{b:?}").contains('7'));
    }

    const SMAPS: &str = "\
55d0c0a00000-55d0c0b00000 r--p 00000000 fe:01 1234 /usr/bin/sealkeeper
Size:               1024 kB
Rss:                 512 kB
Anonymous:             0 kB
Swap:                  0 kB
Locked:                0 kB
VmFlags: rd mr mw me
55d0c0b00000-55d0c1b00000 r-xp 00100000 fe:01 1234 /usr/bin/sealkeeper
Rss:                8192 kB
Anonymous:             0 kB
Swap:                  0 kB
Locked:                0 kB
55d0c1b00000-55d0c1b10000 r--p 01100000 fe:01 1234 /usr/bin/sealkeeper
Rss:                  64 kB
Anonymous:            64 kB
Swap:                  0 kB
Locked:                0 kB
55d0c1b10000-55d0c1b20000 rw-p 01110000 fe:01 1234 /usr/bin/sealkeeper
Rss:                  16 kB
Anonymous:            16 kB
7f0000000000-7f0000100000 r-xp 00000000 fe:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 900 kB
Anonymous:             0 kB
Swap:                  4 kB
Locked:                0 kB
7f0000200000-7f0000201000 r-xp 00000000 fe:01 77 /usr/lib/softhsm/libsofthsm2.so
Rss:                   4 kB
Anonymous:             0 kB
Swap:                  0 kB
Locked:                4 kB
7f0000300000-7f0000301000 r--s 00000000 fe:01 55 /dev/shm/x
Rss:                   4 kB
Anonymous:             0 kB
7f0000400000-7f0000401000 r-xp 00000000 00:00 0 [vdso]
Rss:                   4 kB
Anonymous:             0 kB
7f0000500000-7f0000501000 r-xp 00000000 fe:01 1234 /usr/bin/sealkeeper
Rss:                   0 kB
Anonymous:             0 kB
";

    #[test]
    fn only_whole_private_read_only_file_mappings_unchanged_from_their_file_are_released() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 9);
        assert_eq!(maps[1].start, 0x55d0c0b00000);
        assert_eq!(maps[1].end, 0x55d0c1b00000);
        assert_eq!((maps[1].inode, maps[1].rss_kb), (1234, 8192));
        let picked: Vec<(usize, u64)> = maps
            .iter()
            .filter(|m| m.is_unchanged_file_mapping())
            .map(|m| (m.start, m.rss_kb))
            .collect();
        // The constants and the code; not the relocated (anonymous) or writable part, not a
        // mapping with a swapped or a locked page, not a shared one, not the vDSO, not an empty one.
        assert_eq!(picked, vec![(0x55d0c0a00000, 512), (0x55d0c0b00000, 8192)]);
        // A field that does not parse counts as present: the mapping is left alone.
        let odd = SMAPS.replace("Anonymous:             0 kB\nSwap:                  0 kB\nLocked:                0 kB\nVmFlags", "Anonymous:             ? kB\nSwap:                  0 kB\nLocked:                0 kB\nVmFlags");
        assert!(!parse_smaps(&odd)[0].is_unchanged_file_mapping());
        let missing = SMAPS.replace("Anonymous:             0 kB\nSwap:                  0 kB\nLocked:                0 kB\nVmFlags", "Swap:                  0 kB\nLocked:                0 kB\nVmFlags");
        assert!(!parse_smaps(&missing)[0].is_unchanged_file_mapping());
    }

    #[test]
    fn releasing_this_process_s_file_pages_drops_some_and_its_code_still_runs() {
        fn digest(data: &[u8]) -> Vec<u8> {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
                .as_ref()
                .to_vec()
        }
        let before = digest(b"sealkeeper");
        let released = release_file_pages().unwrap();
        assert!(released > 0, "this test binary's code was resident");
        // The code and constants fault back from the file: the same answers as before.
        assert_eq!(digest(b"sealkeeper"), before);
        let maps = parse_smaps(&std::fs::read_to_string("/proc/self/smaps").unwrap());
        assert!(maps.iter().any(|m| m.perms == "r-xp" && m.inode != 0));
    }
}
