//! Probing what a wgpu adapter offers before an example commits to it.

/// Runs `probe`, turning a panic (how the wgpu runtime reports a missing
/// adapter or feature) into its message, with the panic hook silenced.
///
/// The wgpu runtime sets its device up on a thread of its own: when that
/// fails, the probe itself only sees a closed channel. The message returned is
/// therefore the first panic seen on any thread while the probe ran (the
/// cause), falling back to the probe's own panic payload.
pub fn try_quietly<T>(probe: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    use std::sync::{Arc, Mutex};
    let first_panic = Arc::new(Mutex::new(None::<String>));
    let sink = first_panic.clone();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let mut slot = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // The message itself, without the "panicked at FILE:LINE" that
        // `to_string` puts before it (kept for a payload that is not text).
        slot.get_or_insert_with(|| {
            info.payload_as_str()
                .map_or_else(|| info.to_string(), str::to_string)
        });
    }));
    let result = std::panic::catch_unwind(probe);
    std::panic::set_hook(hook);
    result.map_err(|payload| {
        let cause = first_panic
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        cause.unwrap_or_else(|| panic_text(&*payload).unwrap_or_else(|| "the runtime panicked".into()))
    })
}

/// The text of a caught panic's payload, if it is a string (as `panic!`
/// with a message makes it).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
}

/// Whether a wgpu adapter answers and computes a sum correctly; `Ok` holds its name.
#[cfg(feature = "wgpu")]
pub fn wgpu_adapter() -> Result<String, String> {
    use burn::tensor::{backend::Backend, Tensor};
    try_quietly(|| {
        let device = burn::backend::wgpu::WgpuDevice::default();
        let t = Tensor::<burn::backend::Wgpu, 1>::from_floats([1.0, 2.0], &device);
        let sum = t
            .sum()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32 data")[0];
        assert_eq!(sum, 3.0, "the wgpu adapter computed 1 + 2 = {sum}");
        <burn::backend::Wgpu as Backend>::name(&device)
    })
}

/// The f64 variant of the wgpu backend: Burn's fusion has no f64, so it is the
/// unfused cube backend on the wgpu runtime.
#[cfg(feature = "wgpu")]
pub type Wgpu64 = burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f64, i32, u32>;

/// Whether the default wgpu adapter runs f64 shaders.
#[cfg(feature = "wgpu")]
pub fn wgpu_has_f64() -> bool {
    use burn::tensor::{backend::Backend, DType};
    <Wgpu64 as Backend>::supports_dtype(&burn::backend::wgpu::WgpuDevice::default(), DType::F64)
}

#[cfg(test)]
mod tests {
    use super::try_quietly;
    use std::sync::Mutex;

    /// The panic hook is process-wide: these tests take turns installing it.
    static HOOK: Mutex<()> = Mutex::new(());

    #[test]
    fn a_probe_that_returns_is_ok() {
        let _turn = HOOK.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(try_quietly(|| 3), Ok(3));
    }

    #[test]
    fn the_cause_on_another_thread_is_reported_not_the_closed_channel() {
        let _turn = HOOK.lock().unwrap_or_else(|p| p.into_inner());
        // Like the wgpu runtime: the setup fails on a thread of its own and
        // the caller only sees its channel close.
        let result: Result<(), String> = try_quietly(|| {
            let (sender, receiver) = std::sync::mpsc::channel::<()>();
            let _ = std::thread::spawn(move || {
                let _sender = sender;
                panic!("no adapter for the requested backend");
            })
            .join();
            receiver.recv().unwrap();
        });
        let message = result.unwrap_err();
        assert!(
            message.contains("no adapter for the requested backend"),
            "{message}"
        );
    }

    #[test]
    fn a_panic_on_the_probe_thread_is_its_message() {
        let _turn = HOOK.lock().unwrap_or_else(|p| p.into_inner());
        let result: Result<(), String> = try_quietly(|| panic!("missing feature"));
        assert!(result.unwrap_err().contains("missing feature"));
    }
}
