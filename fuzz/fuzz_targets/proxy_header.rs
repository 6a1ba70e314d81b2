//! Fuzzes the PROXY header reader: any bytes, arriving in reads of any sizes, must give a
//! header no longer than `MAX_HEADER_BYTES` whose client and rest agree with the input, or a
//! one-line error; never a panic and never a wait for bytes that cannot come.
//!
//! Input layout: byte 0 seeds the read sizes, the rest is what the load balancer sends. Run with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run proxy_header` from the project root.

#![no_main]

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};
use zen_server::proxy::{MAX_HEADER_BYTES, ProxyPolicy};

/// Hands out `input` in reads of varying sizes, then its end.
struct Chunked<'a> {
    input: &'a [u8],
    seed: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let size = (self.seed % 37 + 1).min(self.input.len()).min(buf.remaining());
        self.seed = self.seed.wrapping_mul(31).wrapping_add(7);
        let (now, later) = self.input.split_at(size);
        buf.put_slice(now);
        self.input = later;
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
}

fuzz_target!(|data: &[u8]| {
    let [seed, input @ ..] = data else { return };
    let policy = ProxyPolicy { trusted: vec!["0.0.0.0/0".parse().unwrap()], header_timeout: Duration::from_secs(3600) };
    let mut reader = Chunked { input, seed: usize::from(*seed) };
    let peer = "192.0.2.1:5000".parse().unwrap();
    let result = RUNTIME.with(|runtime| runtime.block_on(policy.read_header(&mut reader, peer)));
    match result {
        Ok(proxied) => {
            assert!(proxied.header_bytes <= MAX_HEADER_BYTES, "a header of {} bytes", proxied.header_bytes);
            let after = &input[proxied.header_bytes..];
            assert_eq!(&after[..proxied.rest.len()], &proxied.rest[..], "the rest is not what followed the header");
            let version_1 = input.starts_with(b"PROXY ");
            let version_2 = input.starts_with(b"\r\n\r\n\0\r\nQUIT\n");
            assert!(version_1 || version_2, "a header without either signature");
        }
        Err(error) => assert!(!error.to_string().contains('\n'), "an error of more than one line: {error}"),
    }
});
