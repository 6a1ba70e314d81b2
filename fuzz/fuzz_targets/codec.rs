//! Fuzzes `ZenCodec`: any bytes, split into reads anyhow, under any question limit, must decode
//! exactly as the reference framing says, and never leave a limit's worth of bytes buffered.
//!
//! Input layout: byte 0 picks the limit (1..=64), byte 1 seeds the read sizes, the rest is what
//! the client sends. Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run codec` from the project root.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use zen_server::codec::{
    Incoming, ZenCodec,
    reference::{self, Ending},
};

fuzz_target!(|data: &[u8]| {
    let [limit, seed, input @ ..] = data else { return };
    let max = usize::from(limit % 64) + 1;
    let lengths: Vec<usize> = (0..input.len()).map(|i| (i * 7 + usize::from(*seed)) % 17 + 1).collect();
    let mut codec = ZenCodec::new(max);
    let mut buffer = BytesMut::new();
    let mut events = Vec::new();
    for chunk in reference::split(input, &lengths) {
        buffer.extend_from_slice(chunk);
        while let Some(event) = codec.decode(&mut buffer).expect("decoding never fails") {
            events.push(event);
        }
        assert!(buffer.len() < max, "{} bytes buffered with a limit of {max}", buffer.len());
    }
    while let Some(event) = codec.decode_eof(&mut buffer).expect("decoding never fails") {
        events.push(event);
    }
    let mut questions = Vec::new();
    let mut ending = Ending::Clean;
    for event in events {
        assert_eq!(ending, Ending::Clean, "an event after the end");
        match event {
            Incoming::Questions(batch) => questions.extend(batch.iter().map(<[u8]>::to_vec)),
            Incoming::TooLong { .. } => ending = Ending::TooLong,
            Incoming::PartialAtEof(bytes) => ending = Ending::Partial(bytes.to_vec()),
        }
    }
    assert_eq!((questions, ending), reference::frame(input, max));
});
