//! Common TCP options, each as its full bytes.

pub fn nop() -> Vec<u8> {
    [1].to_vec()
}

pub fn eol() -> Vec<u8> {
    [0].to_vec()
}

pub fn mss(mss: u16) -> Vec<u8> {
    let m = mss.to_be_bytes();
    [2, 4, m[0], m[1]].to_vec()
}

pub fn wscale(shift: u8) -> Vec<u8> {
    [3, 3, shift].to_vec()
}

pub fn sack_permitted() -> Vec<u8> {
    [4, 2].to_vec()
}

pub fn timestamps(val: u32, ecr: u32) -> Vec<u8> {
    let mut v = [8, 10].to_vec();
    v.extend_from_slice(&val.to_be_bytes());
    v.extend_from_slice(&ecr.to_be_bytes());
    v
}
