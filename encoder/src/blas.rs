//! Optional OpenBLAS matrix multiply (cargo feature `blas`, on by default; it only compiles the
//! loader, and OpenBLAS runs only when asked for): `$MRL_OPENBLAS` names a shared
//! library exporting `cblas_sgemm` (e.g. `libscipy_openblas.so` from the PyPI wheel
//! `scipy-openblas32`, whose symbols carry a `scipy_` prefix; `scripts/openblas.sh` installs it
//! and prints the path), loaded once with `dlopen`.
//!
//! OpenBLAS runs single-threaded here and the caller splits rows over the rayon pool, so its
//! own thread pool never competes with rayon's for the two cores. Without the variable, or
//! when the library cannot be loaded (reported once on stderr), the `gemm` crate runs.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::OnceLock;

extern "C" {
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

const RTLD_NOW: c_int = 2;
const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);
type SetThreads = unsafe extern "C" fn(c_int);

/// The loaded `cblas_sgemm`.
pub struct Blas {
    sgemm: Sgemm,
}

static BLAS: OnceLock<Option<Blas>> = OnceLock::new();

/// The library named by `$MRL_OPENBLAS`, loaded on first use.
pub fn get() -> Option<&'static Blas> {
    BLAS.get_or_init(|| {
        let path = std::env::var("MRL_OPENBLAS").ok()?;
        match Blas::load(&path) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("MRL_OPENBLAS={path}: {e}; using the built-in gemm");
                None
            }
        }
    })
    .as_ref()
}

impl Blas {
    pub(crate) fn load(path: &str) -> Result<Self, String> {
        let c = CString::new(path).map_err(|_| "the path has a NUL byte".to_string())?;
        // SAFETY: dlopen/dlsym are called with NUL-terminated strings; the handle is kept
        // open for the life of the process (never dlclose'd), so the symbols stay valid.
        unsafe {
            let handle = dlopen(c.as_ptr(), RTLD_NOW);
            if handle.is_null() {
                return Err("dlopen failed".into());
            }
            let find = |names: &[&str]| {
                names.iter().find_map(|n| {
                    let s = CString::new(*n).expect("symbol names have no NUL");
                    let p = dlsym(handle, s.as_ptr());
                    (!p.is_null()).then_some(p)
                })
            };
            let sgemm = find(&["cblas_sgemm", "scipy_cblas_sgemm"])
                .ok_or_else(|| "no cblas_sgemm in it".to_string())?;
            if let Some(set) = find(&["openblas_set_num_threads", "scipy_openblas_set_num_threads"])
            {
                let set: SetThreads = std::mem::transmute::<*mut c_void, SetThreads>(set);
                set(1);
            }
            Ok(Self {
                sgemm: std::mem::transmute::<*mut c_void, Sgemm>(sgemm),
            })
        }
    }

    /// `dst = (accumulate ? dst : 0) + scale · lhs · rhs` for views with a unit stride in one
    /// direction each; `false` (nothing done) for any other layout.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sgemm(
        &self,
        dst: &mut [f32],
        dst_rs: usize,
        (m, k, n): (usize, usize, usize),
        lhs: (&[f32], usize, usize),
        rhs: (&[f32], usize, usize),
        scale: f32,
        accumulate: bool,
    ) -> bool {
        // (transpose flag, leading dimension) of a row-major view with strides (rs, cs).
        let layout = |rs: usize, cs: usize, rows: usize, cols: usize| {
            if cs == 1 && rs >= cols.max(1) {
                Some((NO_TRANS, rs))
            } else if rs == 1 && cs >= rows.max(1) {
                Some((TRANS, cs))
            } else {
                None
            }
        };
        let (Some((ta, lda)), Some((tb, ldb))) =
            (layout(lhs.1, lhs.2, m, k), layout(rhs.1, rhs.2, k, n))
        else {
            return false;
        };
        let fits = |v: usize| c_int::try_from(v).is_ok();
        if ![m, n, k, lda, ldb, dst_rs].into_iter().all(fits) {
            return false;
        }
        // SAFETY: the caller bounds-checked every view (MatRef::new) and the destination;
        // the leading dimensions were checked against the shapes above.
        unsafe {
            (self.sgemm)(
                ROW_MAJOR,
                ta,
                tb,
                m as c_int,
                n as c_int,
                k as c_int,
                scale,
                lhs.0.as_ptr(),
                lda as c_int,
                rhs.0.as_ptr(),
                ldb as c_int,
                if accumulate { 1.0 } else { 0.0 },
                dst.as_mut_ptr(),
                dst_rs as c_int,
            );
        }
        true
    }
}
