//! Every remote operation goes through here: one multiplexed OpenSSH session per host (the
//! `openssh` crate over the system's `ssh`), opened with a connect timeout and retried while a
//! host boots, bounded parallelism across hosts, a timeout on every command, and host keys
//! pinned per network in its own known_hosts file (accept-new on first contact; a changed key
//! is a hard error naming both fingerprints). Secrets travel on stdin, never in arguments.

use crate::inventory::Node;
use openssh::{ForwardType, KnownHosts, Session, SessionBuilder};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// How to open sessions; the same for every host of a network.
#[derive(Clone, Debug)]
pub struct SshOptions {
    /// The network's own known_hosts file (created on first contact).
    pub known_hosts: PathBuf,
    /// Private key to log in with; `None`: ssh's own choice (agent, ~/.ssh/id_*).
    pub identity: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Keep retrying a host that does not answer yet (still booting) for this long.
    pub boot_wait: Duration,
    pub command_timeout: Duration,
    /// Hosts worked on at once.
    pub parallelism: usize,
}

impl SshOptions {
    pub fn new(known_hosts: PathBuf, identity: Option<PathBuf>) -> Self {
        SshOptions {
            known_hosts,
            identity,
            connect_timeout: Duration::from_secs(10),
            boot_wait: Duration::from_secs(0),
            command_timeout: Duration::from_secs(120),
            parallelism: 8,
        }
    }
}

/// Who to log in as, where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The node's name, used in every message.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
}

impl Target {
    pub fn of(node: &Node) -> Self {
        Target {
            name: node.name.clone(),
            host: node.host.clone(),
            port: node.ssh_port.unwrap_or(22),
            user: node.ssh_user.clone().unwrap_or_else(|| "root".into()),
        }
    }

    /// How known_hosts names this host: `host`, or `[host]:port` off port 22.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }

    fn display(&self) -> String {
        format!("{} ({}@{}:{})", self.name, self.user, self.host, self.port)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{host}: the host key changed (pinned: {old}; offered now: {new})")]
    HostKeyChanged { host: String, known_hosts_name: String, old: String, new: String, known_hosts: PathBuf },
    #[error("{host}: SSH login refused: {message}")]
    Auth { host: String, message: String },
    #[error("{host}: cannot connect over SSH: {message}")]
    Connect { host: String, message: String },
    #[error("{host}: {step}: timed out after {secs} s")]
    Timeout { host: String, step: String, secs: u64 },
    #[error("{host}: {step}: exit status {code}{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Failed { host: String, step: String, code: i32, stderr: String },
    #[error("{host}: {step}: {message}")]
    Session { host: String, step: String, message: String },
}

impl SshError {
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            SshError::HostKeyChanged { known_hosts_name, known_hosts, .. } => format!(
                "if the host was rebuilt on purpose, forget its old key with `ssh-keygen -R '{known_hosts_name}' -f {}` and run again; otherwise someone may be in the middle",
                known_hosts.display()
            ),
            SshError::Auth { .. } => {
                "check ssh_user in the inventory and the key (--ssh-identity FILE or TIMECTL_SSH_IDENTITY)".into()
            }
            // sshd answered, then hung up before the login: most often a host still booting,
            // whose pam_nologin turns away every user but root until boot ends.
            SshError::Connect { message, .. } if message.contains("Connection closed") => {
                "sshd hung up before the login: a host still booting lets in only root until it is up (pam_nologin), so try again once it is; otherwise see sshd's log there (AllowUsers, MaxStartups)".into()
            }
            SshError::Connect { .. } => {
                "check the host's address and ssh_port in the inventory, and that sshd runs there".into()
            }
            _ => return None,
        })
    }
}

/// The first line of ssh's diagnostics that says something (it prefixes warnings with
/// banners of `@`).
fn ssh_message(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('@') && !l.starts_with("Warning: Permanently added"))
        .collect();
    lines.last().map_or_else(|| "ssh failed without a message".to_string(), |l| l.to_string())
}

fn is_transient(log: &str) -> bool {
    let l = log.to_ascii_lowercase();
    [
        "connection refused",
        "connection timed out",
        "no route to host",
        "connection closed",
        "connection reset",
        "kex_exchange_identification",
        "network is unreachable",
        "timeout",
    ]
    .iter()
    .any(|s| l.contains(s))
}

/// SHA256 fingerprints of `name`'s keys in a known_hosts file, as `TYPE SHA256:...`.
async fn pinned_fingerprints(known_hosts: &Path, name: &str) -> Vec<String> {
    let out = tokio::process::Command::new("ssh-keygen")
        .arg("-l")
        .arg("-F")
        .arg(name)
        .arg("-f")
        .arg(known_hosts)
        .stdin(Stdio::null())
        .output()
        .await;
    out.map(|o| fingerprints(&String::from_utf8_lossy(&o.stdout))).unwrap_or_default()
}

/// SHA256 fingerprints of the keys the host offers now (ssh-keyscan, then ssh-keygen -l).
async fn offered_fingerprints(t: &Target, timeout: Duration) -> Vec<String> {
    let scan = tokio::process::Command::new("ssh-keyscan")
        .arg("-T")
        .arg(timeout.as_secs().max(1).to_string())
        .arg("-p")
        .arg(t.port.to_string())
        .arg(&t.host)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await;
    let Ok(scan) = scan else { return Vec::new() };
    let child = tokio::process::Command::new("ssh-keygen")
        .args(["-l", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return Vec::new() };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&scan.stdout).await;
    }
    child.wait_with_output().await.map(|o| fingerprints(&String::from_utf8_lossy(&o.stdout))).unwrap_or_default()
}

/// `256 SHA256:abc... [host]:22 (ED25519)` or `[host]:22 ED25519 SHA256:abc...` -> `ED25519 SHA256:abc...`.
fn fingerprints(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(fp) = words.iter().find(|w| w.starts_with("SHA256:")) else { continue };
        let kind = words
            .iter()
            .find_map(|w| w.strip_prefix('(').and_then(|w| w.strip_suffix(')')))
            .or_else(|| words.iter().find(|w| ["ED25519", "RSA", "ECDSA", "DSA"].contains(w)).copied())
            .unwrap_or("?");
        let entry = format!("{kind} {fp}");
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    out
}

/// Pairs the pinned and offered key of the same type, for one clear line each.
fn describe_change(old: &[String], new: &[String]) -> (String, String) {
    for o in old {
        let kind = o.split_whitespace().next().unwrap_or_default();
        if let Some(n) = new.iter().find(|n| n.split_whitespace().next() == Some(kind)) {
            return (o.clone(), n.clone());
        }
    }
    let join = |v: &[String]| if v.is_empty() { "unknown".to_string() } else { v.join(", ") };
    (join(old), join(new))
}

/// One open session to one host.
pub struct Host {
    pub target: Target,
    session: Session,
    command_timeout: Duration,
}

impl Host {
    /// Opens the session, retrying transient failures within `opts.boot_wait`.
    pub async fn connect(target: &Target, opts: &SshOptions) -> Result<Host, SshError> {
        if let Some(dir) = opts.known_hosts.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut b = SessionBuilder::default();
        b.user(target.user.clone())
            .port(target.port)
            // accept-new: pin on first contact, refuse a changed key.
            .known_hosts_check(KnownHosts::Add)
            .user_known_hosts_file(&opts.known_hosts)
            .connect_timeout(opts.connect_timeout)
            .server_alive_interval(Duration::from_secs(15))
            // Control sockets need a short path (108 bytes).
            .control_directory(std::env::temp_dir());
        if let Some(k) = &opts.identity {
            b.keyfile(k);
        }
        let deadline = Instant::now() + opts.boot_wait;
        loop {
            match b.connect_mux(&target.host).await {
                Ok(session) => {
                    return Ok(Host { target: target.clone(), session, command_timeout: opts.command_timeout })
                }
                Err(e) => {
                    let log = error_text(&e);
                    if log.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
                        || log.contains("Host key verification failed")
                    {
                        let name = target.known_hosts_name();
                        let old = pinned_fingerprints(&opts.known_hosts, &name).await;
                        let new = offered_fingerprints(target, opts.connect_timeout).await;
                        let (old, new) = describe_change(&old, &new);
                        return Err(SshError::HostKeyChanged {
                            host: target.display(),
                            known_hosts_name: name,
                            old,
                            new,
                            known_hosts: opts.known_hosts.clone(),
                        });
                    }
                    if log.contains("Permission denied") || log.contains("Too many authentication failures") {
                        return Err(SshError::Auth { host: target.display(), message: ssh_message(&log) });
                    }
                    if is_transient(&log) && Instant::now() < deadline {
                        tracing::debug!("{}: not answering yet ({}), retrying", target.name, ssh_message(&log));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    return Err(SshError::Connect { host: target.display(), message: ssh_message(&log) });
                }
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.target.name
    }

    /// Whether commands need `sudo` to act as root.
    fn sudo(&self) -> bool {
        self.target.user != "root"
    }

    /// `sh -ec script` on the host, as root: through `sudo -n` when logged in as someone else.
    fn shell<'s>(&'s self, script: &str) -> openssh::OwningCommand<&'s openssh::Session> {
        let mut c = self.session.command(if self.sudo() { "sudo" } else { "sh" });
        if self.sudo() {
            c.args(["-n", "sh"]);
        }
        c.args(["-ec", script]);
        c
    }

    /// Runs `script` with `sh -e` (as root: through `sudo -n` when logged in as someone else),
    /// feeding `stdin`; returns (exit code, stdout, stderr) without judging the exit code.
    pub async fn exec(
        &self,
        step: &str,
        script: &str,
        stdin: Option<&[u8]>,
    ) -> Result<(i32, String, String), SshError> {
        let host = self.target.display();
        let mut cmd = self.shell(script);
        cmd.stdin(if stdin.is_some() { openssh::Stdio::piped() } else { openssh::Stdio::null() })
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        let sess = |message: String| SshError::Session { host: host.clone(), step: step.to_string(), message };
        let work = async {
            let mut child = cmd.spawn().await.map_err(|e| sess(error_text(&e)))?;
            if let Some(bytes) = stdin {
                let mut w = child.stdin().take().ok_or_else(|| sess("no stdin".into()))?;
                w.write_all(bytes).await.map_err(|e| sess(e.to_string()))?;
                w.shutdown().await.map_err(|e| sess(e.to_string()))?;
                drop(w);
            }
            child.wait_with_output().await.map_err(|e| sess(error_text(&e)))
        };
        let out = tokio::time::timeout(self.command_timeout, work).await.map_err(|_| SshError::Timeout {
            host: host.clone(),
            step: step.to_string(),
            secs: self.command_timeout.as_secs(),
        })??;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }

    /// Runs `script` (as root), copying its stdout to ours as it comes, with no time limit
    /// (`journalctl --follow`); ends when the command does or on Ctrl-C.
    pub async fn stream(&self, step: &str, script: &str) -> Result<i32, SshError> {
        let host = self.target.display();
        let sess = |message: String| SshError::Session { host: host.clone(), step: step.to_string(), message };
        let mut cmd = self.shell(script);
        cmd.stdin(openssh::Stdio::null()).stdout(openssh::Stdio::piped()).stderr(openssh::Stdio::inherit());
        let mut child = cmd.spawn().await.map_err(|e| sess(error_text(&e)))?;
        let mut out = child.stdout().take().ok_or_else(|| sess("no stdout".into()))?;
        let copy = async {
            let mut stdout = tokio::io::stdout();
            tokio::io::copy(&mut out, &mut stdout).await
        };
        tokio::select! {
            r = copy => { r.map_err(|e| sess(e.to_string()))?; }
            _ = tokio::signal::ctrl_c() => { return Ok(0); }
        }
        let status = child.wait().await.map_err(|e| sess(error_text(&e)))?;
        Ok(status.code().unwrap_or(-1))
    }

    /// Runs `script` and fails unless it exits 0; returns its stdout.
    pub async fn run(&self, step: &str, script: &str) -> Result<String, SshError> {
        self.run_stdin(step, script, None).await
    }

    pub async fn run_stdin(&self, step: &str, script: &str, stdin: Option<&[u8]>) -> Result<String, SshError> {
        let (code, out, err) = self.exec(step, script, stdin).await?;
        if code != 0 {
            return Err(SshError::Failed { host: self.target.display(), step: step.to_string(), code, stderr: err });
        }
        Ok(out)
    }

    /// Writes `bytes` to `dest` with `mode` and `owner` (user:group), atomically: through stdin
    /// to a temporary file beside it, then renamed, so a reader never sees half a file and
    /// the content never appears in a process argument.
    pub async fn upload(&self, step: &str, bytes: &[u8], dest: &str, mode: u32, owner: &str) -> Result<(), SshError> {
        let script = format!(
            "umask 077; d=$(dirname {dest}); mkdir -p \"$d\"; t=$(mktemp \"$d/.timectl.XXXXXX\"); cat > \"$t\"; chown {owner} \"$t\"; chmod {mode:o} \"$t\"; mv -f \"$t\" {dest}",
            dest = shell_quote(dest),
            owner = shell_quote(owner),
        );
        self.run_stdin(step, &script, Some(bytes)).await.map(|_| ())
    }

    /// Forwards a free port on 127.0.0.1 here to `remote` (host:port as seen from the host);
    /// returns the local address.
    pub async fn forward(&self, remote: &str) -> Result<SocketAddr, SshError> {
        let err = |message: String| SshError::Session {
            host: self.target.display(),
            step: format!("forward to {remote}"),
            message,
        };
        let (rhost, rport) = remote.rsplit_once(':').ok_or_else(|| err("not host:port".into()))?;
        let rport: u16 = rport.parse().map_err(|_| err("bad port".into()))?;
        let rhost = rhost.trim_start_matches('[').trim_end_matches(']').to_string();
        let mut last = String::new();
        // A port picked free can be taken before ssh binds it; try a few.
        for _ in 0..5 {
            let local = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| err(e.to_string()))?;
            match self
                .session
                .request_port_forward(ForwardType::Local, local, openssh::Socket::new(rhost.clone(), rport))
                .await
            {
                Ok(()) => return Ok(local),
                Err(e) => last = error_text(&e),
            }
        }
        Err(err(last))
    }

    /// Closes the session (ends the master connection).
    pub async fn close(self) {
        if let Err(e) = self.session.close().await {
            tracing::debug!("{}: closing the SSH session: {e}", self.target.name);
        }
    }
}

/// An error and its causes on one line (ssh's own diagnostics are in the innermost).
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

/// POSIX single quotes.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:=@".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Sessions to many hosts, opened `parallelism` at a time.
pub struct Pool {
    pub hosts: Vec<Host>,
}

impl Pool {
    /// Opens a session to every target; all or nothing (on failure the ones opened are closed).
    pub async fn connect(targets: &[Target], opts: &SshOptions) -> Result<Pool, Vec<SshError>> {
        // Owned per task, so the future is Send for any caller (async_trait providers too).
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(opts.parallelism.max(1)));
        let tasks = targets.iter().cloned().enumerate().map(|(i, t)| {
            let (gate, opts) = (gate.clone(), opts.clone());
            async move {
                let _permit = gate.acquire_owned().await;
                (i, Host::connect(&t, &opts).await)
            }
        });
        let results: Vec<(usize, Result<Host, SshError>)> = futures::future::join_all(tasks).await;
        let mut hosts: Vec<Option<Host>> = (0..targets.len()).map(|_| None).collect();
        let mut errors = Vec::new();
        for (i, r) in results {
            match r {
                Ok(h) => hosts[i] = Some(h),
                Err(e) => errors.push((i, e)),
            }
        }
        if errors.is_empty() {
            return Ok(Pool { hosts: hosts.into_iter().map(|h| h.expect("every host connected")).collect() });
        }
        for h in hosts.into_iter().flatten() {
            h.close().await;
        }
        errors.sort_by_key(|(i, _)| *i);
        Err(errors.into_iter().map(|(_, e)| e).collect())
    }

    pub async fn close(self) {
        futures::future::join_all(self.hosts.into_iter().map(Host::close)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hang_up_before_login_gets_its_own_hint() {
        let connect = |message: &str| SshError::Connect { host: "n".into(), message: message.into() }.hint().unwrap();
        assert!(connect("Connection closed by 10.0.0.9 port 22").contains("pam_nologin"));
        let refused = connect("ssh: connect to host 10.0.0.9 port 22: Connection refused");
        assert!(refused.contains("that sshd runs there") && !refused.contains("pam_nologin"));
    }

    #[test]
    fn known_hosts_names_and_quoting() {
        let t = Target { name: "n".into(), host: "10.0.0.1".into(), port: 22, user: "root".into() };
        assert_eq!(t.known_hosts_name(), "10.0.0.1");
        let t = Target { port: 2222, ..t };
        assert_eq!(t.known_hosts_name(), "[10.0.0.1]:2222");
        assert_eq!(shell_quote("/etc/timed/genesis.toml"), "/etc/timed/genesis.toml");
        assert_eq!(shell_quote("a b'c"), "'a b'\\''c'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn fingerprints_from_both_ssh_keygen_formats() {
        let keyscan = "256 SHA256:AAAA [127.0.0.1]:2222 (ED25519)\n3072 SHA256:BBBB [127.0.0.1]:2222 (RSA)\n";
        assert_eq!(fingerprints(keyscan), vec!["ED25519 SHA256:AAAA", "RSA SHA256:BBBB"]);
        let pinned = "# Host [127.0.0.1]:2222 found: line 1\n[127.0.0.1]:2222 ED25519 SHA256:CCCC\n";
        assert_eq!(fingerprints(pinned), vec!["ED25519 SHA256:CCCC"]);
        let (old, new) = describe_change(&fingerprints(pinned), &fingerprints(keyscan));
        assert_eq!((old.as_str(), new.as_str()), ("ED25519 SHA256:CCCC", "ED25519 SHA256:AAAA"));
        assert_eq!(describe_change(&[], &[]), ("unknown".to_string(), "unknown".to_string()));
    }

    #[test]
    fn ssh_diagnostics_are_summarised() {
        let log = "@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@@\nHost key verification failed.\n";
        assert_eq!(ssh_message(log), "Host key verification failed.");
        assert!(is_transient("ssh: connect to host 10.0.0.9 port 22: Connection refused"));
        assert!(!is_transient("root@10.0.0.9: Permission denied (publickey)."));
    }
}
