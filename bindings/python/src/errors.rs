//! The errors the extension raises, as Lanyard's own classes
//! (`lanyard/__init__.py`): each derives from `lanyard.LanyardError` and
//! from the builtin Python code already catches (`InvalidInput` is a
//! `ValueError`, `Timeout` a `TimeoutError`, ...), so `except
//! lanyard.LanyardError` catches everything Lanyard raises and `except
//! ValueError` still works. The types here stand in for pyo3's of the same
//! names, so a call site reads as before.

use pyo3::prelude::*;

/// An instance of `lanyard.<class>` with `message`, or the builtin error
/// when the package cannot be reached (the extension used on its own).
fn lanyard_error(class: &str, message: String, builtin: fn(String) -> PyErr) -> PyErr {
    Python::attach(|py| {
        let made = py
            .import("lanyard")
            .and_then(|m| m.getattr(class))
            .and_then(|cls| cls.call1((message.clone(),)));
        match made {
            Ok(instance) => PyErr::from_value(instance),
            Err(_) => builtin(message),
        }
    })
}

macro_rules! lanyard_errors {
    ($($name:ident => $class:literal, $builtin:ty;)*) => {$(
        #[doc = concat!("Raises `lanyard.", $class, "`.")]
        pub struct $name;

        impl $name {
            /// The error, with `message`.
            pub fn new_err(message: impl Into<String>) -> PyErr {
                lanyard_error($class, message.into(), |m| <$builtin>::new_err(m))
            }
        }
    )*};
}

lanyard_errors! {
    PyValueError => "InvalidInput", pyo3::exceptions::PyValueError;
    PyTimeoutError => "Timeout", pyo3::exceptions::PyTimeoutError;
    PyOSError => "LinkError", pyo3::exceptions::PyOSError;
    PyConnectionError => "ConnectionFailed", pyo3::exceptions::PyConnectionError;
    PyPermissionError => "NotPermitted", pyo3::exceptions::PyPermissionError;
    PyRuntimeError => "Closed", pyo3::exceptions::PyRuntimeError;
    PyKeyError => "NotFound", pyo3::exceptions::PyKeyError;
}
