//! SPDY/3 header blocks: name/value pairs compressed with one zlib context per connection
//! direction, seeded with the SPDY/3 dictionary, each block ended by a sync flush. Decoding is
//! bounded (block size, entry count) whatever the peer claims.

use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::bad;

/// The most a decompressed header block may hold, and the most header entries.
pub(super) const MAX_HEADER_BLOCK: usize = 256 * 1024;
const MAX_HEADERS: usize = 256;

/// The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1): length-prefixed
/// header names and values, then common value fragments.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505",
            "203 Non-Authoritative Information",
            "204 No Content",
            "301 Moved Permanently",
            "400 Bad Request",
            "401 Unauthorized",
            "403 Forbidden",
            "404 Not Found",
            "500 Internal Server Error",
            "501 Not Implemented",
            "503 Service Unavailable",
            "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
            "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
            "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
            "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
            "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut d = Vec::with_capacity(1424);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// A stream's headers: lowercase names, values (several values of one name are one entry
/// each).
pub type Headers = Vec<(String, String)>;

/// The first value of `name` in `headers`.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Compresses header blocks: one zlib stream for a whole connection direction, each block
/// ended by a sync flush.
pub struct HeaderEncoder(Compress);

impl Default for HeaderEncoder {
    fn default() -> Self {
        let mut c = Compress::new(Compression::best(), true);
        c.set_dictionary(dictionary())
            .expect("zlib accepts a dictionary before any data");
        HeaderEncoder(c)
    }
}

impl HeaderEncoder {
    pub fn encode(&mut self, headers: &Headers) -> Vec<u8> {
        let mut names: Vec<&str> = Vec::new();
        for (k, _) in headers {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
        let mut plain = Vec::new();
        plain.extend_from_slice(&(names.len() as u32).to_be_bytes());
        for name in names {
            let value = headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
                .join("\0");
            let name = name.to_ascii_lowercase();
            for s in [name.as_bytes(), value.as_bytes()] {
                plain.extend_from_slice(&(s.len() as u32).to_be_bytes());
                plain.extend_from_slice(s);
            }
        }
        let start = self.0.total_in();
        let mut out = Vec::with_capacity(plain.len() * 2 + 64);
        loop {
            let done = (self.0.total_in() - start) as usize;
            // The stream's state is ours alone: the only failure would be a bug in zlib.
            let _ = self
                .0
                .compress_vec(&plain[done..], &mut out, FlushCompress::Sync);
            let done = (self.0.total_in() - start) as usize;
            // All input taken and the flush fitted with room to spare: the block is whole.
            if done == plain.len() && out.len() < out.capacity() {
                return out;
            }
            out.reserve(out.capacity());
        }
    }
}

/// Decompresses header blocks of one connection direction.
#[derive(Default)]
pub struct HeaderDecoder(Option<Decompress>);

impl HeaderDecoder {
    pub fn decode(&mut self, block: &[u8]) -> std::io::Result<Headers> {
        let d = self.0.get_or_insert_with(|| Decompress::new(true));
        let mut out = Vec::with_capacity((block.len() * 4 + 256).min(MAX_HEADER_BLOCK));
        let mut pos = 0;
        loop {
            let (in_before, out_before) = (d.total_in(), out.len());
            let result = d.decompress_vec(&block[pos..], &mut out, FlushDecompress::Sync);
            pos += (d.total_in() - in_before) as usize;
            match result {
                Err(e) if e.needs_dictionary().is_some() => {
                    d.set_dictionary(dictionary())
                        .map_err(|_| bad("header block uses another dictionary than SPDY/3's"))?;
                    continue;
                }
                Err(e) => return Err(bad(format!("header block: {e}"))),
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(bad("header block larger than 256 KiB"));
            }
            if pos >= block.len() && out.len() < out.capacity() {
                break;
            }
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            } else if d.total_in() == in_before && out.len() == out_before {
                return Err(bad("header block does not decompress"));
            }
        }
        parse_block(&out)
    }
}

fn parse_block(b: &[u8]) -> std::io::Result<Headers> {
    let mut pos = 0;
    let u32_at = |pos: &mut usize| -> std::io::Result<usize> {
        let v = b
            .get(*pos..*pos + 4)
            .ok_or_else(|| bad("truncated header block"))?;
        *pos += 4;
        Ok(u32::from_be_bytes(v.try_into().expect("4 bytes")) as usize)
    };
    let n = u32_at(&mut pos)?;
    if n > MAX_HEADERS {
        return Err(bad(format!(
            "{n} headers in one block (at most {MAX_HEADERS})"
        )));
    }
    let mut headers = Vec::new();
    let mut copied = 0usize;
    for _ in 0..n {
        let field = |pos: &mut usize| -> std::io::Result<String> {
            let len = u32_at(pos)?;
            let s = b
                .get(*pos..*pos + len)
                .ok_or_else(|| bad("truncated header block"))?;
            *pos += len;
            Ok(String::from_utf8_lossy(s).into_owned())
        };
        let name = field(&mut pos)?.to_ascii_lowercase();
        let value = field(&mut pos)?;
        for v in value.split('\0') {
            copied += name.len() + v.len();
            if copied > MAX_HEADER_BLOCK || headers.len() >= MAX_HEADERS {
                return Err(bad("header block expands beyond its limits"));
            }
            headers.push((name.clone(), v.to_string()));
        }
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert!(d.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(d.ends_with(b",*,enq=0."));
    }

    #[test]
    fn header_blocks_round_trip_through_one_context() {
        let mut enc = HeaderEncoder::default();
        let mut dec = HeaderDecoder::default();
        for i in 0..5 {
            let h: Headers = vec![
                ("streamtype".into(), "stdout".into()),
                ("port".into(), format!("{}", 8000 + i)),
                ("x-multi".into(), "a".into()),
                ("x-multi".into(), "b".into()),
            ];
            let block = enc.encode(&h);
            assert_eq!(dec.decode(&block).unwrap(), h);
        }
    }

    #[test]
    fn header_blocks_past_their_limits_are_refused() {
        // A value of NULs would give one copy of the name per part.
        let mut plain = 1u32.to_be_bytes().to_vec();
        let (name, value) = (vec![b'n'; 1000], vec![0u8; 100_000]);
        for f in [&name, &value] {
            plain.extend_from_slice(&(f.len() as u32).to_be_bytes());
            plain.extend_from_slice(f);
        }
        assert!(parse_block(&plain).is_err());
        assert!(parse_block(&u32::MAX.to_be_bytes()).is_err());
        assert!(parse_block(&[0, 0, 0, 1, 0, 0, 0, 9]).is_err(), "truncated");
        // More than the block limit once decompressed.
        let big: Headers = vec![("x".into(), "y".repeat(MAX_HEADER_BLOCK + 1))];
        let block = HeaderEncoder::default().encode(&big);
        assert!(block.len() < 4096);
        assert!(HeaderDecoder::default().decode(&block).is_err());
    }
}
