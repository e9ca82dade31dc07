//! Starting the interpreter and loading the application, with uWSGI's options.

use std::path::{Path, PathBuf};
use std::sync::Once;

use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::LoadError;

/// Which application to load and how, with uWSGI's option names and meaning.
///
/// ```
/// use wsgi_host::AppSpec;
/// let spec = AppSpec::module("mysite.wsgi").chdir("/srv/mysite").pythonpath("/srv/lib");
/// assert_eq!(spec.callable_name(), "application");
/// let flask = AppSpec::wsgi_file("run.py").callable("app");
/// assert_eq!(flask.callable_name(), "app");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppSpec {
    /// `wsgi-file`: a Python file loaded as a module.
    pub wsgi_file: Option<PathBuf>,
    /// `module`: `pkg.mod` or `pkg.mod:callable`.
    pub module: Option<String>,
    /// `callable` (default `application`).
    pub callable: Option<String>,
    /// `chdir`: the working directory, set before anything is imported.
    pub chdir: Option<PathBuf>,
    /// `pythonpath`: directories put first on `sys.path`, in order.
    pub pythonpath: Vec<PathBuf>,
    /// `home`/`virtualenv`: a virtual environment whose site-packages the app imports from.
    pub home: Option<PathBuf>,
    /// `env KEY=VALUE`: set in `os.environ` before the import.
    pub env: Vec<(String, String)>,
}

impl AppSpec {
    /// An app loaded from a file (`--wsgi-file`).
    pub fn wsgi_file(path: impl Into<PathBuf>) -> Self {
        Self {
            wsgi_file: Some(path.into()),
            ..Self::default()
        }
    }

    /// An app imported from a module (`--module pkg.mod[:callable]`).
    pub fn module(name: impl Into<String>) -> Self {
        Self {
            module: Some(name.into()),
            ..Self::default()
        }
    }

    /// Sets the callable's name.
    pub fn callable(mut self, name: impl Into<String>) -> Self {
        self.callable = Some(name.into());
        self
    }

    /// Sets the working directory.
    pub fn chdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.chdir = Some(dir.into());
        self
    }

    /// Adds a `sys.path` entry.
    pub fn pythonpath(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pythonpath.push(dir.into());
        self
    }

    /// Sets the virtualenv.
    pub fn home(mut self, dir: impl Into<PathBuf>) -> Self {
        self.home = Some(dir.into());
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the interpreter (once per process) and loads the application: the callable,
    /// for [`WsgiHost::from_callable`](crate::WsgiHost::from_callable). No thread is
    /// started, so a server can load once and fork workers that share the loaded pages
    /// (uWSGI's default; `lazy-apps` loads in each worker instead).
    pub fn load(&self) -> Result<Py<PyAny>, LoadError> {
        ensure_initialized();
        Python::attach(|py| load(py, self))
    }

    /// The callable's name: `module:callable`, else `callable`, else `application`.
    pub fn callable_name(&self) -> &str {
        if let Some((_, c)) = self.module.as_deref().and_then(|m| m.split_once(':')) {
            return c;
        }
        self.callable.as_deref().unwrap_or("application")
    }
}

/// Prepares a process that has loaded an app for `fork` without `exec`, as Python's
/// documentation of `gc.freeze` advises: collects garbage, then moves every object left
/// to the permanent generation. The collector in a forked worker then never walks (or
/// writes the headers of) the objects loaded before the fork, so their pages stay shared
/// with the other workers and a full collection costs only what the worker made itself.
/// Returns how many objects were frozen; 0 if the interpreter was never started.
///
/// ```
/// let app = wsgi_host::AppSpec::module("wsgiref.simple_server:demo_app").load().unwrap();
/// assert!(wsgi_host::freeze_for_fork().unwrap() > 0);
/// # drop(app);
/// ```
pub fn freeze_for_fork() -> Result<usize, LoadError> {
    if !INIT.is_completed() {
        return Ok(0);
    }
    Python::attach(|py| {
        let gc = py.import("gc").map_err(py_err(py, "import gc"))?;
        gc.call_method0("collect")
            .map_err(py_err(py, "gc.collect()"))?;
        gc.call_method0("freeze")
            .map_err(py_err(py, "gc.freeze()"))?;
        gc.call_method0("get_freeze_count")
            .and_then(|n| n.extract::<usize>())
            .map_err(py_err(py, "gc.get_freeze_count()"))
    })
}

/// Starts the embedded interpreter once per process (threads enabled).
pub(crate) fn ensure_initialized() {
    INIT.call_once(Python::initialize);
}

/// Whether the interpreter was started.
static INIT: Once = Once::new();

/// The formatted traceback of `err`.
pub(crate) fn traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = py
        .import("traceback")
        .and_then(|tb| tb.call_method1("format_exception", (err.value(py),)))
        .and_then(|lines| lines.extract::<Vec<String>>());
    match formatted {
        Ok(lines) => lines.concat(),
        Err(_) => err.to_string(),
    }
}

fn py_err(py: Python<'_>, what: impl Into<String>) -> impl FnOnce(PyErr) -> LoadError + '_ {
    let what = what.into();
    move |err| LoadError::Python {
        what,
        traceback: traceback(py, &err),
    }
}

/// Applies the spec's environment and loads the callable.
pub(crate) fn load(py: Python<'_>, spec: &AppSpec) -> Result<Py<PyAny>, LoadError> {
    if let Some(dir) = &spec.chdir {
        std::env::set_current_dir(dir).map_err(|source| LoadError::Chdir {
            path: dir.clone(),
            source,
        })?;
    }
    let os = py.import("os").map_err(py_err(py, "import os"))?;
    let environ = os.getattr("environ").map_err(py_err(py, "os.environ"))?;
    for (k, v) in &spec.env {
        environ
            .set_item(k, v)
            .map_err(py_err(py, format!("setting env {k}")))?;
    }
    let sys = py.import("sys").map_err(py_err(py, "import sys"))?;
    let path = sys.getattr("path").map_err(py_err(py, "sys.path"))?;
    let path = path
        .cast_into::<PyList>()
        .map_err(|e| py_err(py, "sys.path")(e.into()))?;
    if let Some(home) = &spec.home {
        let site = py.import("site").map_err(py_err(py, "import site"))?;
        let version = py.version_info();
        let packages = home
            .join("lib")
            .join(format!("python{}.{}", version.major, version.minor))
            .join("site-packages");
        let before = path.len();
        site.call_method1("addsitedir", (packages.to_string_lossy().into_owned(),))
            .map_err(py_err(
                py,
                format!("adding the virtualenv {}", home.display()),
            ))?;
        // addsitedir appends: move what it added to the front, as a virtualenv would be.
        let added: Vec<Py<PyAny>> = (before..path.len())
            .filter_map(|i| path.get_item(i).ok().map(Bound::unbind))
            .collect();
        while path.len() > before {
            path.del_item(before).map_err(py_err(py, "sys.path"))?;
        }
        for (n, item) in added.iter().enumerate() {
            path.insert(n, item.bind(py))
                .map_err(py_err(py, "sys.path.insert"))?;
        }
    }
    for dir in spec.pythonpath.iter().rev() {
        path.insert(0, dir.to_string_lossy().into_owned())
            .map_err(py_err(py, "sys.path.insert"))?;
    }
    // As `python app.py` and uWSGI do, the working directory is importable.
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    path.insert(0, cwd.to_string_lossy().into_owned())
        .map_err(py_err(py, "sys.path.insert"))?;

    let callable = spec.callable_name().to_owned();
    let (module, name) = if let Some(m) = &spec.module {
        let modname = m.split_once(':').map_or(m.as_str(), |(m, _)| m);
        let module = py
            .import(modname)
            .map_err(py_err(py, format!("import {modname}")))?;
        (module.into_any(), modname.to_owned())
    } else if let Some(file) = &spec.wsgi_file {
        (load_file(py, file)?, file.display().to_string())
    } else {
        return Err(LoadError::NoApp);
    };
    let app = module
        .getattr(callable.as_str())
        .ok()
        .filter(|a| a.is_callable())
        .ok_or(LoadError::NotCallable {
            module: name,
            callable,
        })?;
    Ok(app.unbind())
}

/// Loads a Python file as a module, as uWSGI's `--wsgi-file` does.
fn load_file<'py>(py: Python<'py>, file: &Path) -> Result<Bound<'py, PyAny>, LoadError> {
    let what = format!("loading {}", file.display());
    let name: String = format!("wsgi_file_{}", file.display())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let code = "import importlib.util, sys\n\
                def load(name, path):\n    spec = importlib.util.spec_from_file_location(name, path)\n    \
                if spec is None:\n        raise ImportError('cannot load %s' % path)\n    \
                mod = importlib.util.module_from_spec(spec)\n    sys.modules[name] = mod\n    \
                spec.loader.exec_module(mod)\n    return mod\n";
    let loader = PyModule::from_code(
        py,
        &std::ffi::CString::new(code).unwrap_or_default(),
        c"wsgi_host_loader.py",
        c"wsgi_host_loader",
    )
    .map_err(py_err(py, what.clone()))?;
    loader
        .getattr("load")
        .and_then(|f| f.call1((name, file.to_string_lossy().into_owned())))
        .map_err(py_err(py, what))
}
