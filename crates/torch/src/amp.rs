//! Mixed precision, `--amp off|fp16|bf16` (`--amp` alone, and `amp = true` in older recipes
//! and stored configs, mean fp16). On CUDA the backbone runs under autocast in the chosen
//! dtype and ArcFace's cosine matmul runs in it too; fp16 also scales the loss
//! (`train/scaler.rs`), bf16 needs no scaling (f32's exponent range). On the CPU autocast
//! is not used; fp16's loss scaling still runs.
//!
//! tch 0.24 only switches autocast on and off (for CUDA, in its default fp16). The dtype is
//! set with libtorch's own `at::autocast::set_autocast_dtype(DeviceType, ScalarType)`,
//! looked up by its C++ symbol in the loaded libtorch (`dlsym`): both arguments are
//! one-byte enums, passed as plain integers.

use anyhow::{bail, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::OnceLock;
use tch::{Device, Kind};

/// `--amp`'s value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AmpMode {
    /// f32 throughout.
    #[default]
    Off,
    /// fp16 autocast with dynamic loss scaling (what `--amp` alone means).
    Fp16,
    /// bf16 autocast, no loss scaling (GPUs from Ampere on).
    Bf16,
}

impl AmpMode {
    pub fn enabled(self) -> bool {
        self != AmpMode::Off
    }

    /// Whether the loss is scaled: fp16 only.
    pub fn scales_loss(self) -> bool {
        self == AmpMode::Fp16
    }

    /// The dtype autocast computes in.
    pub fn kind(self) -> Option<Kind> {
        match self {
            AmpMode::Off => None,
            AmpMode::Fp16 => Some(Kind::Half),
            AmpMode::Bf16 => Some(Kind::BFloat16),
        }
    }

    /// The dtype of ArcFace's cosine matmul on `device`: autocast's on CUDA, else f32.
    pub fn cosine_kind(self, device: Device) -> Kind {
        self.kind().filter(|_| device.is_cuda()).unwrap_or(Kind::Float)
    }

    pub fn name(self) -> &'static str {
        match self {
            AmpMode::Off => "off",
            AmpMode::Fp16 => "fp16",
            AmpMode::Bf16 => "bf16",
        }
    }
}

impl Serialize for AmpMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A name, or the boolean that older configs stored (true: fp16).
impl<'de> Deserialize<'de> for AmpMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AmpMode, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Flag(bool),
            Name(String),
        }
        match Form::deserialize(d)? {
            Form::Flag(on) => Ok(if on { AmpMode::Fp16 } else { AmpMode::Off }),
            Form::Name(name) => <AmpMode as clap::ValueEnum>::from_str(&name, false)
                .map_err(|_| serde::de::Error::custom(format!("amp = {name:?}: expected off, fp16 or bf16"))),
        }
    }
}

/// c10's `DeviceType` and `ScalarType` codes used here.
const CPU: i8 = 0;
const CUDA: i8 = 1;

fn scalar_type(kind: Kind) -> i8 {
    match kind {
        Kind::Half => 5,
        Kind::BFloat16 => 15,
        _ => 6,
    }
}

/// libtorch's autocast switches that tch does not wrap.
struct Switches {
    set_dtype: unsafe extern "C" fn(i8, i8),
    set_enabled: unsafe extern "C" fn(i8, bool),
}

const SET_DTYPE: &std::ffi::CStr = c"_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE";
const SET_ENABLED: &std::ffi::CStr = c"_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb";

fn switches() -> Result<&'static Switches> {
    static FOUND: OnceLock<Option<Switches>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        // SAFETY: dlsym on the process's global scope, where libtorch_cpu is loaded; the
        // symbols' C++ signatures are the ones the types above spell.
        unsafe {
            let (d, e) = (
                libc::dlsym(libc::RTLD_DEFAULT, SET_DTYPE.as_ptr()),
                libc::dlsym(libc::RTLD_DEFAULT, SET_ENABLED.as_ptr()),
            );
            if d.is_null() || e.is_null() {
                return None;
            }
            Some(Switches {
                set_dtype: std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn(i8, i8)>(d),
                set_enabled: std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn(i8, bool)>(e),
            })
        }
    });
    match found {
        Some(s) => Ok(s),
        None => bail!(
            "--amp bf16 needs libtorch's at::autocast::set_autocast_dtype, which this libtorch does not export ({SET_DTYPE:?})"
        ),
    }
}

/// Fails early where the dtype cannot be set (only bf16 needs to: fp16 is CUDA's default).
pub fn check(mode: AmpMode) -> Result<()> {
    if mode == AmpMode::Bf16 {
        switches()?;
    }
    Ok(())
}

/// Runs `f` under CUDA autocast in `mode`'s dtype; as it is when off or not on CUDA.
pub fn autocast<T>(mode: AmpMode, device: Device, f: impl FnOnce() -> T) -> Result<T> {
    let Some(kind) = mode.kind().filter(|_| device.is_cuda()) else { return Ok(f()) };
    match switches() {
        // SAFETY: see `switches`; the dtype is thread-local in libtorch.
        Ok(s) => unsafe { (s.set_dtype)(CUDA, scalar_type(kind)) },
        Err(e) if mode == AmpMode::Bf16 => return Err(e),
        Err(_) => {} // fp16 is CUDA autocast's default
    }
    Ok(tch::autocast(true, f))
}

/// CPU autocast in `kind` around `f` (only tests use it: the trainer does not autocast on
/// the CPU). Shows that the dtype switch takes effect.
pub fn cpu_autocast<T>(kind: Kind, f: impl FnOnce() -> T) -> Result<T> {
    let s = switches()?;
    // SAFETY: see `switches`; both settings are thread-local and restored below.
    unsafe {
        (s.set_dtype)(CPU, scalar_type(kind));
        (s.set_enabled)(CPU, true);
    }
    let out = f();
    unsafe {
        (s.set_enabled)(CPU, false);
        (s.set_dtype)(CPU, scalar_type(Kind::BFloat16));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    /// CPU autocast's own default dtype is bf16, so fp16 coming out shows the setter works;
    /// bf16 set again comes out bf16, and outside autocast the matmul stays f32.
    #[test]
    fn the_dtype_switch_takes_effect() {
        let (a, b) = (Tensor::randn([4, 8], tch::kind::FLOAT_CPU), Tensor::randn([8, 3], tch::kind::FLOAT_CPU));
        let half = cpu_autocast(Kind::Half, || a.matmul(&b).kind()).unwrap();
        let bf16 = cpu_autocast(Kind::BFloat16, || a.matmul(&b).kind()).unwrap();
        assert_eq!((half, bf16, a.matmul(&b).kind()), (Kind::Half, Kind::BFloat16, Kind::Float));
        check(AmpMode::Bf16).unwrap();
    }

    #[test]
    fn old_booleans_and_names_load() {
        #[derive(Deserialize, Serialize)]
        struct T {
            amp: AmpMode,
        }
        let read = |text: &str| toml::from_str::<T>(text).map(|t| t.amp);
        assert_eq!(read("amp = true").unwrap(), AmpMode::Fp16);
        assert_eq!(read("amp = false").unwrap(), AmpMode::Off);
        assert_eq!(read("amp = 'bf16'").unwrap(), AmpMode::Bf16);
        assert!(read("amp = 'fp8'").unwrap_err().to_string().contains("off, fp16 or bf16"));
        let json: T = serde_json::from_str("{\"amp\": true}").unwrap();
        assert_eq!(serde_json::to_string(&json).unwrap(), "{\"amp\":\"fp16\"}");
        assert!(!AmpMode::Bf16.scales_loss() && AmpMode::Fp16.scales_loss());
        assert_eq!(AmpMode::Fp16.cosine_kind(Device::Cpu), Kind::Float);
        assert_eq!(AmpMode::Bf16.cosine_kind(Device::Cuda(0)), Kind::BFloat16);
    }
}
