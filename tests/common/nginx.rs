//! Debian's nginx with `libnginx-mod-rtmp` as a real RTMP server nobody here wrote: started
//! by a test on free loopback ports with its own config file, optionally with a TLS
//! terminator (the `stream` module) in front of it for RTMPS. Under `CI` a missing nginx or
//! module fails the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// Whether nginx and its RTMP and stream modules are installed (fails under `CI` if not).
pub fn require_nginx() -> bool {
    let found = Command::new("nginx").arg("-v").output().is_ok()
        && Path::new(RTMP_MODULE).exists()
        && Path::new(STREAM_MODULE).exists();
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("nginx with libnginx-mod-rtmp and libnginx-mod-stream is required under CI (bash .ci/run installs them)");
        }
        eprintln!("SKIPPED LOCALLY: nginx / libnginx-mod-rtmp not installed");
    }
    found
}

/// TLS terminator settings: listen port, certificate and key files.
pub struct Tls {
    pub port: u16,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A running nginx-rtmp.
pub struct Nginx {
    pub dir: PathBuf,
    /// Plain RTMP port (application `live`).
    pub rtmp_port: u16,
    child: Option<Child>,
}

impl Nginx {
    /// Writes the config and starts nginx; waits until the RTMP port accepts connections.
    pub fn start(dir: &Path, tls: Option<Tls>) -> Nginx {
        std::fs::create_dir_all(dir).unwrap();
        let rtmp_port = free_port();
        let d = dir.display();
        let stream = tls.map_or(String::new(), |t| {
            format!(
                "stream {{ server {{ listen 127.0.0.1:{} ssl; ssl_certificate {}; \
                 ssl_certificate_key {}; proxy_pass 127.0.0.1:{rtmp_port}; }} }}\n",
                t.port,
                t.cert.display(),
                t.key.display()
            )
        });
        let conf = format!(
            "daemon off;\nmaster_process off;\nerror_log {d}/error.log info;\npid {d}/nginx.pid;\n\
             load_module {RTMP_MODULE};\nload_module {STREAM_MODULE};\n\
             events {{ worker_connections 512; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{rtmp_port}; chunk_size 4096;\n\
               application live {{ live on; record off; wait_key on; wait_video on; }} }} }}\n\
             {stream}"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut n = Nginx {
            dir: dir.to_owned(),
            rtmp_port,
            child: None,
        };
        n.restart();
        n
    }

    /// (Re)starts nginx on the same ports.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&self.dir)
            .arg("-e")
            .arg(self.dir.join("error.log"))
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.rtmp_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills nginx (every connection drops at once, like a crashed or unreachable server).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `rtmp://127.0.0.1:port/live`
    pub fn url(&self) -> String {
        format!("rtmp://127.0.0.1:{}/live", self.rtmp_port)
    }

    /// nginx's error log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}
