//! AFL target: the push protocol's frame decoder (`im::frame`), as comet's TCP
//! and WebSocket connections run it. See `reborn_fuzz::frame`.

fn main() {
    afl::fuzz!(|data: &[u8]| reborn_fuzz::frame(data));
}
