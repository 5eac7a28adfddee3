//! `moto_server` (PyPI `moto[server]`, installed by `.ci/setup.sh`) as a local EC2 endpoint:
//! started on 127.0.0.1 with a free port, killed by its own PID when dropped, even when the
//! test fails. Its AMIs are the test's own (`MOTO_AMIS_PATH`), including Canonical's
//! Ubuntu 22.04 images the provider looks for.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    pub url: String,
    child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Only the process this test started, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two Ubuntu 22.04 images of different dates (the newer must win), a 20.04 one and a
/// look-alike from another owner, none of which should be picked.
pub const NEWEST_JAMMY: &str = "ami-0a1b2c3d4e5f60002";

fn amis() -> serde_json::Value {
    let ami = |id: &str, owner: &str, name: &str, date: &str| {
        serde_json::json!({
            "ami_id": id, "state": "available", "public": true, "owner_id": owner,
            "image_location": format!("{owner}/{name}"), "root_device_type": "ebs",
            "root_device_name": "/dev/sda1", "description": name, "image_type": "machine",
            "architecture": "x86_64", "name": name, "virtualization_type": "hvm",
            "hypervisor": "xen", "creation_date": date,
        })
    };
    serde_json::json!([
        ami(
            "ami-0a1b2c3d4e5f60001",
            "099720112770",
            "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20240301",
            "2024-03-01T10:00:00.000Z"
        ),
        ami(
            NEWEST_JAMMY,
            "099720112770",
            "ubuntu/images/hvm-ssd-gp3/ubuntu-jammy-22.04-amd64-server-20250601",
            "2025-06-01T10:00:00.000Z"
        ),
        ami(
            "ami-0a1b2c3d4e5f60003",
            "099720112770",
            "ubuntu/images/hvm-ssd/ubuntu-focal-20.04-amd64-server-20250701",
            "2025-07-01T10:00:00.000Z"
        ),
        ami(
            "ami-0a1b2c3d4e5f60004",
            "123456789012",
            "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20260101",
            "2026-01-01T10:00:00.000Z"
        ),
    ])
}

impl Moto {
    /// Starts a server; `auth` makes it check credentials against its own (empty) IAM, so any
    /// key is refused as real AWS would refuse a wrong one.
    pub fn start(auth: bool) -> Moto {
        let dir = tempfile::tempdir().unwrap();
        let amis_path = dir.path().join("amis.json");
        std::fs::write(&amis_path, amis().to_string()).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = dir.path().join("moto.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_AMIS_PATH", &amis_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        if auth {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        let child = cmd.spawn().expect("moto_server not found: run .ci/setup.sh (pip install 'moto[server]')");
        let mut moto = Moto { url: format!("http://127.0.0.1:{port}"), child, log, _dir: dir };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited with {status}: {}", std::fs::read_to_string(&moto.log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "moto_server did not listen within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }
}

/// Instance ids (sorted) of a network's instances in pending or running state, read with the
/// SDK directly rather than through the provider under test.
pub async fn live_instance_ids(client: &aws_sdk_ec2::Client, network: &str) -> Vec<String> {
    use aws_sdk_ec2::types::Filter;
    let out = client
        .describe_instances()
        .filters(Filter::builder().name("tag:timectl-network").values(network).build())
        .filters(Filter::builder().name("instance-state-name").values("pending").values("running").build())
        .send()
        .await
        .unwrap();
    let mut ids: Vec<String> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(String::from))
        .collect();
    ids.sort();
    ids
}
