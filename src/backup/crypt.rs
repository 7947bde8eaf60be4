//! Encryption of archives to age recipients (the format of the reference `age` tool, so that
//! `age -d -i KEY` opens our archives and we open what `age -r` wrote).
//!
//! The node that makes a backup holds only public keys: X25519 recipients (`age1…`) and SSH
//! public keys (`ssh-ed25519 …`, `ssh-rsa …`), given on the command line or in a recipients
//! file (one per line, `#` comments, as `age -R` reads). Whoever verifies or restores an
//! encrypted archive gives an identity file: an age identity file (`age-keygen`'s output) or
//! an unencrypted OpenSSH private key.
//!
//! To verify what it just wrote, `backup` adds one more recipient: a key pair made in memory
//! for this run only. The read-back decrypts the archive with it and checks every sum, then
//! the key is dropped; it is never written anywhere, so once the command has exited the node
//! can no longer read its own archives. (A process that could read this one's memory during
//! the backup would see the plaintext stream anyway.)
//!
//! Errors: a bad recipient or identity file, a missing identity for an encrypted archive and
//! an identity that does not open it are bad input (exit 2) found before anything is
//! written; a ciphertext that fails its authentication while it is read is a verification
//! problem like a wrong sum (exit 1).

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;

use crate::error::{Error, Result};

/// The first bytes of every age file.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";
/// Appended to the archive's name: `….tar.zst.age`.
pub const AGE_SUFFIX: &str = ".age";

/// Identity and recipients files are small; age itself stops at 16 MiB.
const KEY_FILE_LIMIT: u64 = 1 << 20;

/// The public keys an archive is encrypted to.
pub struct Recipients {
    keys: Vec<Box<dyn age::Recipient + Send>>,
    /// Each recipient as given (public; goes into the sidecar and the report).
    pub described: Vec<String>,
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.described).finish()
    }
}

/// One recipient: `age1…` (X25519) or an OpenSSH public key line. age 0.13 marks both
/// deprecated in favour of its post-quantum recipients, which the reference tool operators
/// have (Debian's age 1.1) cannot read: interop is the point, so these are the ones taken.
#[allow(deprecated)]
fn parse_recipient(text: &str) -> std::result::Result<Box<dyn age::Recipient + Send>, String> {
    let text = text.trim();
    if text.starts_with("age1") {
        return age::x25519::Recipient::from_str(text)
            .map(|r| Box::new(r) as Box<dyn age::Recipient + Send>)
            .map_err(|e| format!("not an age X25519 recipient ({e})"));
    }
    if text.starts_with("ssh-") {
        return match age::ssh::Recipient::from_str(text) {
            Ok(r) => Ok(Box::new(r)),
            Err(age::ssh::ParseRecipientKeyError::Unsupported(kind)) => Err(format!(
                "SSH key type {kind} is not supported (ssh-ed25519 and ssh-rsa are)"
            )),
            Err(_) => Err("not a valid SSH public key".into()),
        };
    }
    if text.starts_with("AGE-SECRET-KEY-") || text.contains("PRIVATE KEY") {
        return Err(
            "is a private key: give the node only the public key (age-keygen -y, or the .pub file)"
                .into(),
        );
    }
    Err("not a recipient (age1…, ssh-ed25519 … or ssh-rsa …)".into())
}

/// Short form of a recipient for messages: its first 20 characters.
fn short(text: &str) -> String {
    let t: String = text.chars().take(20).collect();
    if t.len() < text.len() {
        format!("{t}…")
    } else {
        t
    }
}

fn read_small(path: &Path, what: &str) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::input(path, format!("no such {what}")),
        _ => Error::io("stat", path, e),
    })?;
    if !meta.is_file() {
        return Err(Error::input(path, format!("is not a file (the {what})")));
    }
    if meta.len() > KEY_FILE_LIMIT {
        return Err(Error::input(
            path,
            format!("{} bytes is too large for a {what}", meta.len()),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    String::from_utf8(bytes).map_err(|_| Error::input(path, format!("the {what} is not UTF-8")))
}

impl Recipients {
    /// `--recipient` values and `--recipients-file` files; `None` when neither was given.
    /// Every bad line is exit 2 naming the flag or file and the line.
    pub fn parse(given: &[String], files: &[PathBuf]) -> Result<Option<Recipients>> {
        let mut keys = Vec::new();
        let mut described = Vec::new();
        for r in given {
            let key = parse_recipient(r)
                .map_err(|e| Error::Usage(format!("--recipient {}: {e}", short(r))))?;
            keys.push(key);
            described.push(r.trim().to_string());
        }
        for f in files {
            let text = read_small(f, "recipients file")?;
            let mut found = 0;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let key = parse_recipient(line)
                    .map_err(|e| Error::input(f, format!("line {}: {e}", i + 1)))?;
                keys.push(key);
                described.push(line.to_string());
                found += 1;
            }
            if found == 0 {
                return Err(Error::input(f, "the recipients file names no recipient"));
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Recipients { keys, described }))
    }
}

/// Private keys that may open an archive, read from an identity file.
pub struct Identity {
    pub path: PathBuf,
    keys: Vec<Box<dyn age::Identity + Send + Sync>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.path.display())
    }
}

impl Identity {
    /// An age identity file (`AGE-SECRET-KEY-1…` lines) or an unencrypted OpenSSH private
    /// key. Anything else is exit 2 naming the file.
    pub fn load(path: &Path) -> Result<Identity> {
        let text = read_small(path, "identity file")?;
        if text.contains("-----BEGIN") {
            let key = age::ssh::Identity::from_buffer(
                BufReader::new(text.as_bytes()),
                Some(path.display().to_string()),
            )
            .map_err(|e| Error::input(path, format!("not a usable SSH private key ({e})")))?;
            return match key {
                age::ssh::Identity::Unencrypted(_) => Ok(Identity {
                    path: path.to_path_buf(),
                    keys: vec![Box::new(key)],
                }),
                age::ssh::Identity::Encrypted(_) => Err(Error::input(
                    path,
                    "the SSH private key is passphrase-protected; use an unencrypted copy of it \
                     (ssh-keygen -p -N '' on a copy) or an age identity",
                )),
                age::ssh::Identity::Unsupported(_) => Err(Error::input(
                    path,
                    "this SSH key type is not supported (ssh-ed25519 and ssh-rsa are)",
                )),
            };
        }
        let file =
            age::IdentityFile::from_buffer(BufReader::new(text.as_bytes())).map_err(|_| {
                Error::input(
                    path,
                    "not an identity file (AGE-SECRET-KEY-1… lines, or an OpenSSH private key)",
                )
            })?;
        let keys = file
            .into_identities()
            .map_err(|e| Error::input(path, format!("unusable identity ({e})")))?;
        if keys.is_empty() {
            return Err(Error::input(path, "the identity file holds no identity"));
        }
        Ok(Identity {
            path: path.to_path_buf(),
            keys,
        })
    }
}

/// A key pair for one run's read-back (see the module doc): the recipient goes into the
/// archive, the identity verifies it and is dropped with this value.
pub struct Ephemeral {
    secret: age::x25519::Identity,
}

impl Ephemeral {
    /// X25519, like the operators' recipients: age refuses to mix X25519 and post-quantum
    /// recipients in one file.
    #[allow(deprecated)]
    pub fn new() -> Self {
        Ephemeral {
            secret: age::x25519::Identity::generate(),
        }
    }

    pub fn identity(&self) -> Identity {
        // Round-trip through the text form: `Identity` owns boxed keys.
        let again = age::x25519::Identity::from_str(self.secret.to_string().expose_secret())
            .expect("a generated identity parses");
        Identity {
            path: PathBuf::from("(this run's read-back key)"),
            keys: vec![Box::new(again)],
        }
    }
}

impl Default for Ephemeral {
    fn default() -> Self {
        Self::new()
    }
}

/// The encrypting layer of an archive being written: everything written to it reaches
/// `sink` as an age stream. `finish` writes the last chunk; without it the file does not
/// decrypt (a half archive never looks whole).
pub type Encrypting<W> = age::stream::StreamWriter<W>;

pub fn encrypt<W: Write>(
    recipients: &Recipients,
    extra: Option<&Ephemeral>,
    sink: W,
) -> io::Result<Encrypting<W>> {
    let extra_recipient = extra.map(|e| e.secret.to_public());
    let list = recipients
        .keys
        .iter()
        .map(|k| k.as_ref() as &dyn age::Recipient)
        .chain(extra_recipient.as_ref().map(|r| r as &dyn age::Recipient));
    age::Encryptor::with_recipients(list)
        .map_err(|e| io::Error::other(format!("age: {e}")))?
        .wrap_output(sink)
}

/// Whether the first bytes of a file are an age header.
pub fn is_age(head: &[u8]) -> bool {
    head.starts_with(AGE_MAGIC)
}

/// Open an age-encrypted archive for reading: the header is read and the file key unwrapped
/// with `identity` before the caller reads anything. No identity, or one that matches none
/// of the archive's recipients, is exit 2; a broken header is exit 2 too (not an archive).
pub fn decrypt<R: Read>(
    archive: &Path,
    identity: Option<&Identity>,
    input: R,
) -> Result<age::stream::StreamReader<R>> {
    let Some(identity) = identity else {
        return Err(Error::input(
            archive,
            "is encrypted (age): give the identity with --identity FILE or ETCDOPS_IDENTITY",
        ));
    };
    let decryptor = age::Decryptor::new(input)
        .map_err(|e| Error::input(archive, format!("not a readable age file ({e})")))?;
    if decryptor.is_scrypt() {
        return Err(Error::input(
            archive,
            "is encrypted with a passphrase, not to recipients; etcdops archives never are",
        ));
    }
    decryptor
        .decrypt(
            identity
                .keys
                .iter()
                .map(|k| k.as_ref() as &dyn age::Identity),
        )
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => Error::input(
                &identity.path,
                format!(
                    "no key in it opens {} (encrypted to other recipients)",
                    archive.display()
                ),
            ),
            e => Error::input(archive, format!("cannot be decrypted: {e}")),
        })
}

/// The first `AGE_MAGIC.len()` bytes of a file (fewer when it is shorter).
pub fn head(path: &Path) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; AGE_MAGIC.len()];
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
#[allow(deprecated)]
mod tests {
    use super::*;

    fn roundtrip(recipients: &Recipients, identity: &Identity) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = encrypt(recipients, None, &mut out).unwrap();
        w.write_all(b"hello archive").unwrap();
        w.finish().unwrap();
        assert!(is_age(&out));
        let mut r = decrypt(Path::new("a"), Some(identity), out.as_slice()).unwrap();
        let mut plain = Vec::new();
        r.read_to_end(&mut plain).unwrap();
        plain
    }

    #[test]
    fn x25519_recipient_and_identity_file_roundtrip_and_a_stranger_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let secret = age::x25519::Identity::generate();
        let public = secret.to_public().to_string();
        let key = d.path().join("key.txt");
        std::fs::write(
            &key,
            format!(
                "# created: now\n# public key: {public}\n{}\n",
                secret.to_string().expose_secret()
            ),
        )
        .unwrap();
        let recipients = Recipients::parse(std::slice::from_ref(&public), &[])
            .unwrap()
            .unwrap();
        let identity = Identity::load(&key).unwrap();
        assert_eq!(roundtrip(&recipients, &identity), b"hello archive");

        // Another key: exit 2 naming the identity file.
        let other = d.path().join("other.txt");
        std::fs::write(
            &other,
            format!(
                "{}\n",
                age::x25519::Identity::generate()
                    .to_string()
                    .expose_secret()
            ),
        )
        .unwrap();
        let other = Identity::load(&other).unwrap();
        let mut out = Vec::new();
        let mut w = encrypt(&recipients, None, &mut out).unwrap();
        w.write_all(b"x").unwrap();
        w.finish().unwrap();
        let err = decrypt(Path::new("a"), Some(&other), out.as_slice())
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("other.txt"), "{err}");
        let err = decrypt(Path::new("arch"), None, out.as_slice())
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--identity"), "{err}");
    }

    #[test]
    fn the_ephemeral_key_opens_what_it_was_added_to() {
        let public = age::x25519::Identity::generate().to_public().to_string();
        let recipients = Recipients::parse(&[public], &[]).unwrap().unwrap();
        let eph = Ephemeral::new();
        let mut out = Vec::new();
        let mut w = encrypt(&recipients, Some(&eph), &mut out).unwrap();
        w.write_all(b"read back").unwrap();
        w.finish().unwrap();
        let mut r = decrypt(Path::new("a"), Some(&eph.identity()), out.as_slice()).unwrap();
        let mut plain = Vec::new();
        r.read_to_end(&mut plain).unwrap();
        assert_eq!(plain, b"read back");
    }

    #[test]
    fn bad_recipients_are_usage_errors_naming_the_line() {
        let d = tempfile::tempdir().unwrap();
        assert!(Recipients::parse(&[], &[]).unwrap().is_none());
        for bad in [
            "age1nope",
            "ssh-ed25519 AAAA",
            "hello",
            "AGE-SECRET-KEY-1ABC",
        ] {
            let err = Recipients::parse(&[bad.to_string()], &[]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}: {err}");
            assert!(err.to_string().contains("--recipient"), "{err}");
        }
        let f = d.path().join("recipients");
        let good = age::x25519::Identity::generate().to_public().to_string();
        std::fs::write(&f, format!("# team\n\n{good}\nbogus\n")).unwrap();
        let err = Recipients::parse(&[], std::slice::from_ref(&f)).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("line 4"), "{err}");
        std::fs::write(&f, "# nobody\n").unwrap();
        let err = Recipients::parse(&[], std::slice::from_ref(&f)).unwrap_err();
        assert!(err.to_string().contains("names no recipient"), "{err}");
        std::fs::write(&f, format!("{good}\n")).unwrap();
        let r = Recipients::parse(&[], &[f]).unwrap().unwrap();
        assert_eq!(r.described, vec![good]);
    }

    #[test]
    fn bad_identity_files_are_input_errors() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("id");
        assert_eq!(Identity::load(&f).unwrap_err().exit_code(), 2);
        std::fs::write(&f, "not a key\n").unwrap();
        let err = Identity::load(&f).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("not an identity file"), "{err}");
        std::fs::write(&f, "# only a comment\n").unwrap();
        assert_eq!(Identity::load(&f).unwrap_err().exit_code(), 2);
        assert_eq!(Identity::load(d.path()).unwrap_err().exit_code(), 2);
    }
}
