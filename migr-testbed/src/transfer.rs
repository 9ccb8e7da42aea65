//! Moves the checkpoint images from the source node to the destination node
//! over the testbed's links, through the router, so that the presets act on
//! the transfer (seed 000 moved its images with rsync; COAT over a shaped
//! link). One TCP connection from a socket in the source node's namespace to
//! one in the destination node's; each file goes as its relative path and its
//! bytes. A local `cp` would leave the link presets out of the downtime.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use migr_testkit::NetNs;

/// Copies every regular file under `src` (in `from`'s file system view,
/// which is the same here) to `dst`, over TCP from `from` to `to_ip` in
/// `to`. Returns the bytes of file content sent.
pub fn copy_over_network(
    from: &NetNs,
    to: &NetNs,
    to_ip: &str,
    src: &Path,
    dst: &Path,
) -> Result<u64> {
    let listener = to
        .run(|| TcpListener::bind((to_ip, 0)))?
        .with_context(|| format!("listening on {to_ip} in {}", to.name()))?;
    let at: SocketAddr = listener.local_addr()?;
    let into = dst.to_path_buf();
    let receiver = std::thread::spawn(move || -> Result<u64> {
        let stream = accept_within(&listener, Duration::from_secs(15))?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        receive(BufReader::with_capacity(1 << 20, stream), &into)
    });
    let files = list_files(src)?;
    let sent = (|| -> Result<u64> {
        let stream = from
            .run(|| TcpStream::connect_timeout(&at, Duration::from_secs(10)))?
            .with_context(|| format!("connecting to {at} from {}", from.name()))?;
        let mut out = BufWriter::with_capacity(1 << 20, stream);
        let mut sent = 0;
        for rel in &files {
            let mut f = File::open(src.join(rel))?;
            let len = f.metadata()?.len();
            let name = rel.to_str().context("a non-UTF-8 image name")?.as_bytes();
            out.write_all(&(name.len() as u32).to_be_bytes())?;
            out.write_all(name)?;
            out.write_all(&len.to_be_bytes())?;
            let copied = std::io::copy(&mut f, &mut out)?;
            if copied != len {
                bail!("{} changed while it was sent", rel.display());
            }
            sent += len;
        }
        out.write_all(&0u32.to_be_bytes())?;
        out.flush()?;
        Ok(sent)
    })();
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the image receiver panicked"))?;
    let sent = sent.context("sending the images")?;
    let received = received.context("receiving the images")?;
    if sent != received {
        bail!("sent {sent} bytes of images, received {received}");
    }
    Ok(sent)
}

/// The first connection within `limit` (a sender that never connects must
/// fail the run, not hang it).
fn accept_within(listener: &TcpListener, limit: Duration) -> Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= deadline {
                    bail!("no sender connected within {limit:?}");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Regular files under `dir`, relative to it, sorted.
fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(dir.join(&rel))
            .with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = rel.join(entry.file_name());
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn receive(mut input: impl Read, into: &Path) -> Result<u64> {
    std::fs::create_dir_all(into)?;
    let mut total = 0;
    loop {
        let mut word = [0u8; 4];
        input.read_exact(&mut word)?;
        let name_len = u32::from_be_bytes(word) as usize;
        if name_len == 0 {
            return Ok(total);
        }
        if name_len > 4096 {
            bail!("an image name of {name_len} bytes");
        }
        let mut name = vec![0u8; name_len];
        input.read_exact(&mut name)?;
        let rel = PathBuf::from(String::from_utf8(name)?);
        if rel.is_absolute() || rel.components().any(|c| c.as_os_str() == "..") {
            bail!("an image path outside the directory: {}", rel.display());
        }
        let mut len = [0u8; 8];
        input.read_exact(&mut len)?;
        let len = u64::from_be_bytes(len);
        let path = into.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let copied = std::io::copy(&mut (&mut input).take(len), &mut f)?;
        if copied != len {
            bail!("{} arrived short: {copied} of {len} bytes", rel.display());
        }
        total += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_goes_through_the_wire_format_whole() {
        let base = std::env::temp_dir().join(format!("migr-transfer-{}", std::process::id()));
        let (src, dst) = (base.join("src"), base.join("dst"));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("pages-1.img"), vec![7u8; 100_000]).unwrap();
        std::fs::write(src.join("sub/empty"), b"").unwrap();
        let mut wire = Vec::new();
        for rel in list_files(&src).unwrap() {
            let bytes = std::fs::read(src.join(&rel)).unwrap();
            let name = rel.to_str().unwrap().as_bytes();
            wire.extend_from_slice(&(name.len() as u32).to_be_bytes());
            wire.extend_from_slice(name);
            wire.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            wire.extend_from_slice(&bytes);
        }
        wire.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(receive(&wire[..], &dst).unwrap(), 100_000);
        assert_eq!(
            std::fs::read(dst.join("pages-1.img")).unwrap(),
            vec![7u8; 100_000]
        );
        assert!(dst.join("sub/empty").exists());
        // Cut short, or escaping the directory: an error, never a panic.
        assert!(receive(&wire[..wire.len() - 10], &base.join("short")).is_err());
        let mut evil = Vec::new();
        evil.extend_from_slice(&5u32.to_be_bytes());
        evil.extend_from_slice(b"../x1");
        assert!(receive(&evil[..], &base.join("evil")).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
