//! Loading apps with uWSGI's options; failures at start-up with the traceback.

use wsgi_host::{AppSpec, HostOptions, LoadError, WsgiHost};

use crate::support::{apps_dir, get};

#[test]
fn a_failing_import_is_reported_at_start_with_its_traceback() {
    let err = WsgiHost::start(
        &AppSpec::wsgi_file(apps_dir().join("broken_import.py")),
        HostOptions::default(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::Python { .. }), "{err:?}");
    assert!(text.contains("ModuleNotFoundError"), "{text}");
    assert!(text.contains("this_module_does_not_exist"), "{text}");
    assert!(text.contains("Traceback"), "{text}");
}

#[test]
fn missing_or_uncallable_callables_are_errors() {
    let err = WsgiHost::start(
        &AppSpec::wsgi_file(apps_dir().join("basic.py")).callable("CLOSED"),
        HostOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, LoadError::NotCallable { .. }), "{err:?}");
    assert!(matches!(
        WsgiHost::start(&AppSpec::default(), HostOptions::default()),
        Err(LoadError::NoApp)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_pythonpath_env_and_virtualenv() {
    let dir = testkit::temp_dir();
    let pkg = dir.path().join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("__init__.py"), "").unwrap();
    std::fs::write(
        pkg.join("site.py"),
        "import os\nimport venvonly\n\
         def app(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         return [(os.environ['GREETING'] + ' ' + venvonly.NAME).encode()]\n",
    )
    .unwrap();
    // A virtualenv-shaped directory whose site-packages holds a module.
    let version = std::process::Command::new(crate::support::python())
        .args(["-c", "import sys;print('%d.%d' % sys.version_info[:2])"])
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap().trim().to_owned();
    let venv = dir.path().join("venv");
    let site = venv.join(format!("lib/python{version}/site-packages"));
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("venvonly.py"), "NAME = 'from-the-venv'\n").unwrap();
    let spec = AppSpec::module("pkg.site:app")
        .pythonpath(dir.path())
        .home(&venv)
        .env("GREETING", "hello");
    assert_eq!(spec.callable_name(), "app");
    let host = WsgiHost::start(&spec, HostOptions::default()).unwrap();
    let r = get(&host, "/").await;
    assert_eq!(
        (r.head.status, r.text().as_str()),
        (200, "hello from-the-venv")
    );
}
