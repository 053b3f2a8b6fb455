//! Docker for the tests that need a real container runtime: images built on this machine from a
//! host binary, private networks, and containers, each removed when its handle is dropped.
//!
//! The project's machines run a Docker engine with no registry, so nothing is pulled: an image is
//! a host binary plus the shared libraries `ldd` lists (and the dynamic loader), packed into a tar
//! and loaded with `docker import`, which is the same as a `FROM scratch` image with those files
//! copied in and needs no builder plugin. Every image, network and container carries the label
//! [`TEST_LABEL`] so that what a crashed test left behind can be found.
//!
//! A test that needs Docker fails when it is missing; none is skipped ([`require_docker`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The label on everything this module creates (`docker ps -a --filter label=...`).
pub const TEST_LABEL: &str = "dev.mechanics.test";

/// Runs `docker ARGS` and returns its output; panics naming the command when it cannot start.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run `docker {}`: {err}", args.join(" ")))
}

/// Runs `docker ARGS`, panics with its stderr unless it succeeds, and returns its trimmed stdout.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "`docker {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Panics with a clear message unless a Docker engine answers: the test needs one.
pub fn require_docker() {
    let out = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "this test needs a running Docker engine; `docker info` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => panic!("this test needs Docker; the `docker` command cannot run: {err}"),
    }
}

/// A name no other test (of this or another process) uses at the same time: `prefix-PID-N-NANOS`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A local image made of one host binary and the libraries it loads; removed on drop.
#[derive(Debug)]
pub struct ScratchImage {
    /// The image's tag, `localhost/NAME:test`.
    pub tag: String,
    /// The CLI whose image store holds it: `docker` or `podman`.
    cli: &'static str,
}

impl ScratchImage {
    /// Builds an image named after `name` holding `binary` at `/app` (its entrypoint, given
    /// `args` first) and, at their host paths, the shared libraries and loader `ldd` lists.
    /// The image also has an empty, world-writable `/tmp`.
    ///
    /// # Panics
    /// When the binary cannot be read, `ldd` or `docker import` fails.
    pub fn build(name: &str, binary: &Path, args: &[&str]) -> ScratchImage {
        require_docker();
        Self::import_with("docker", name, binary, args)
    }

    /// [`build`](Self::build) into Podman's image store (`podman import`; Podman keeps its own
    /// images, apart from Docker's).
    ///
    /// # Panics
    /// When `podman` cannot run, or as [`build`](Self::build) does.
    pub fn build_for_podman(name: &str, binary: &Path, args: &[&str]) -> ScratchImage {
        Self::import_with("podman", name, binary, args)
    }

    fn import_with(cli: &'static str, name: &str, binary: &Path, args: &[&str]) -> ScratchImage {
        let context = tempdir(name);
        copy_into(&context, binary, Path::new("/app"));
        for library in shared_libraries(binary) {
            copy_into(&context, &library, &library);
        }
        let tmp = context.join("tmp");
        fs::create_dir_all(&tmp).expect("creating tmp in the image context");
        set_mode(&tmp, 0o1777);

        let tag = format!("localhost/{}:test", unique_name(name));
        let mut entrypoint = vec!["/app".to_owned()];
        entrypoint.extend(args.iter().map(|arg| (*arg).to_owned()));
        let entrypoint = format!("ENTRYPOINT {}", json_array(&entrypoint));
        let label = format!("LABEL {TEST_LABEL}=1");
        let mut tar = Command::new("tar")
            .args(["-C"])
            .arg(&context)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("running tar for the image context");
        let import = Command::new(cli)
            .args([
                "import",
                "--change",
                &entrypoint,
                "--change",
                &label,
                "-",
                &tag,
            ])
            .stdin(tar.stdout.take().expect("tar's stdout"))
            .output()
            .unwrap_or_else(|err| panic!("cannot run `{cli} import`: {err}"));
        let tarred = tar.wait().expect("waiting for tar");
        let _ = fs::remove_dir_all(&context);
        assert!(
            tarred.success(),
            "tar of the image context failed: {tarred}"
        );
        assert!(
            import.status.success(),
            "{cli} import of {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&import.stderr).trim()
        );
        ScratchImage { tag, cli }
    }
}

impl Drop for ScratchImage {
    fn drop(&mut self) {
        let _ = Command::new(self.cli)
            .args(["rmi", "-f", &self.tag])
            .stdin(Stdio::null())
            .output();
    }
}

/// A private bridge network; removed on drop (after the containers on it).
#[derive(Debug)]
pub struct Network {
    /// The network's name.
    pub name: String,
    /// The first three octets of its `/24` subnet, when it was created with one.
    prefix: Option<String>,
}

impl Network {
    /// Creates a bridge network with a unique name made from `name`.
    pub fn create(name: &str) -> Network {
        require_docker();
        let name = unique_name(name);
        docker_ok(&["network", "create", "--label", TEST_LABEL, &name]);
        Network { name, prefix: None }
    }

    /// Creates a bridge network with a unique name made from `name` on a free `/24` of
    /// `10.231.0.0/16`, so that containers can be given fixed addresses ([`Network::address`],
    /// `docker run --ip`): what a certificate for a container's address needs, since it must be
    /// issued before the container starts.
    ///
    /// # Panics
    /// When no subnet tried is free.
    pub fn create_with_subnet(name: &str) -> Network {
        require_docker();
        let name = unique_name(name);
        // Start at a per-process offset so that concurrent tests rarely try the same subnet.
        let start = std::process::id() as usize + NEXT_SUBNET.fetch_add(7, Ordering::Relaxed);
        let mut last_error = String::new();
        for attempt in 0..32 {
            let prefix = format!("10.231.{}", (start + attempt * 37) % 250 + 1);
            let subnet = format!("{prefix}.0/24");
            let out = docker(&[
                "network", "create", "--label", TEST_LABEL, "--subnet", &subnet, &name,
            ]);
            if out.status.success() {
                return Network {
                    name,
                    prefix: Some(prefix),
                };
            }
            // Most likely another network already has it: try the next.
            last_error = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        }
        panic!("no free /24 in 10.231.0.0/16 for network {name}: {last_error}");
    }

    /// Address `host` (2 to 254) on this network's subnet.
    ///
    /// # Panics
    /// When the network was made without a subnet ([`Network::create`]).
    pub fn address(&self, host: u8) -> String {
        let prefix = self
            .prefix
            .as_deref()
            .expect("a network made with create_with_subnet");
        format!("{prefix}.{host}")
    }
}

static NEXT_SUBNET: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// A running container; removed (forcibly) on drop.
#[derive(Debug)]
pub struct Container {
    /// The container's full id.
    pub id: String,
}

impl Container {
    /// `docker run -d --label TEST_LABEL RUN_ARGS IMAGE COMMAND_ARGS`: `run_args` are the options
    /// (network, published ports, env), `command_args` follow the image's entrypoint.
    pub fn run(image: &str, run_args: &[&str], command_args: &[&str]) -> Container {
        require_docker();
        let mut args = vec!["run", "-d", "--label", TEST_LABEL];
        args.extend_from_slice(run_args);
        args.push(image);
        args.extend_from_slice(command_args);
        Container {
            id: docker_ok(&args),
        }
    }

    /// The container's IPv4 address on `network`.
    pub fn ip_on(&self, network: &Network) -> String {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            network.name
        );
        docker_ok(&["inspect", "--format", &format, &self.id])
    }

    /// Cuts the container off `network` (`docker network disconnect --force`): its address there
    /// stops answering, so connections to it time out rather than being refused.
    pub fn disconnect(&self, network: &Network) {
        docker_ok(&["network", "disconnect", "--force", &network.name, &self.id]);
    }

    /// Connects the container to `network` again, at `ip` when given.
    pub fn connect(&self, network: &Network, ip: Option<&str>) {
        let mut args = vec!["network", "connect"];
        if let Some(ip) = ip {
            args.extend(["--ip", ip]);
        }
        args.extend([network.name.as_str(), self.id.as_str()]);
        docker_ok(&args);
    }

    /// What the container has printed so far (stdout and stderr), for failure messages.
    pub fn logs(&self) -> String {
        let out = docker(&["logs", &self.id]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.id]);
    }
}

/// The absolute paths `ldd` prints for `binary`: its shared libraries and the dynamic loader.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .expect("running ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary: `ldd` says "not a dynamic executable" and fails.
        return Vec::new();
    }
    text.lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)".
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies the file `from` (following links) to `to` inside `root`, keeping its permissions.
fn copy_into(root: &Path, from: &Path, to: &Path) {
    let target = root.join(to.strip_prefix("/").unwrap_or(to));
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).expect("creating a directory in the image context");
    }
    fs::copy(from, &target)
        .unwrap_or_else(|err| panic!("copying {} into the image: {err}", from.display()));
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(&format!("mechanics-image-{name}")));
    fs::create_dir_all(&dir).expect("creating the image context directory");
    dir
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .expect("setting a directory's mode");
}

fn json_array(items: &[String]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_of_a_host_binary_runs_it() {
        let image =
            ScratchImage::build("true-test", Path::new("/bin/echo"), &["hello from scratch"]);
        let out = docker_ok(&["run", "--rm", &image.tag]);
        assert_eq!(out, "hello from scratch");
    }
}
