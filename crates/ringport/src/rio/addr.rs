//! Socket addresses in registered buffers, and the `IP_PKTINFO` control
//! messages that carry a datagram's local address. The `sockaddr` codec
//! itself is [`sys::addr`](crate::sys::addr)'s.
//!
//! An address slice holds a `sockaddr_in` or `sockaddr_in6` as the kernel
//! lays them out (what Windows calls `SOCKADDR_INET`); slices may sit at any
//! offset, so every access here copies bytes rather than casting pointers.

use std::mem::{size_of, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use crate::sys::addr as codec;
use crate::Error;

/// The least length of a slice that holds a socket address: an IPv6
/// `sockaddr_in6`, 28 bytes. A whole `sockaddr_storage` (128) is fine too.
pub const ADDRESS_LEN: u32 = size_of::<libc::sockaddr_in6>() as u32;

/// Writes `addr` into `out` as a `sockaddr_in`/`sockaddr_in6`, for a
/// [`send_ex`](super::RequestQueue::send_ex) remote or local address slice.
/// Returns the bytes written; fails if `out` is shorter than that.
pub fn write_addr(out: &mut [u8], addr: SocketAddr) -> Result<usize, Error> {
    let (storage, len) = codec::to_storage(&addr);
    let len = len as usize;
    if out.len() < len {
        return Err(Error::InvalidArgument(
            "address slice too small for this address",
        ));
    }
    // SAFETY: storage is a plain C struct at least `len` bytes long.
    let bytes = unsafe { std::slice::from_raw_parts(&storage as *const _ as *const u8, len) };
    out[..len].copy_from_slice(bytes);
    Ok(len)
}

/// Reads the address the kernel (or [`write_addr`]) left in `buf`; `None`
/// if it holds no IPv4 or IPv6 address.
pub fn read_addr(buf: &[u8]) -> Option<SocketAddr> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let n = buf.len().min(size_of::<libc::sockaddr_storage>());
    // SAFETY: n bytes fit in the storage; it was zeroed, so every byte of it
    // is initialised afterwards.
    let storage = unsafe {
        std::ptr::copy_nonoverlapping(buf.as_ptr(), storage.as_mut_ptr() as *mut u8, n);
        storage.assume_init()
    };
    codec::read(&storage, n as libc::socklen_t)
}

/// The family's `sockaddr` length for an address at `ptr` (its first two
/// bytes), or 0 if it is not an IP address.
///
/// # Safety
/// `ptr` must be readable for 2 bytes.
pub(super) unsafe fn len_at(ptr: *const u8) -> libc::socklen_t {
    // SAFETY: the caller's promise; sa_family_t is u16, read unaligned.
    let family = unsafe { std::ptr::read_unaligned(ptr as *const libc::sa_family_t) };
    codec::family_len(family)
}

/// Writes `addr` at `ptr` (any alignment).
///
/// # Safety
/// `ptr` must be writable for [`ADDRESS_LEN`] bytes that nothing else reads
/// or writes meanwhile.
pub(super) unsafe fn write_at(ptr: *mut u8, addr: &SocketAddr) {
    let (storage, len) = codec::to_storage(addr);
    // SAFETY: len <= ADDRESS_LEN, the caller's promise covers the target.
    unsafe { std::ptr::copy_nonoverlapping(&storage as *const _ as *const u8, ptr, len as usize) }
}

/// Room for one `IP_PKTINFO` or `IPV6_PKTINFO` control message.
pub(super) const CONTROL_LEN: usize = 64;

/// Control-message buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(super) struct Control(pub(super) [u8; CONTROL_LEN]);

/// Turns on `IP_PKTINFO` (or `IPV6_RECVPKTINFO`) so that receives carry the
/// local address each datagram was sent to.
pub(super) fn enable_pktinfo(fd: i32, domain: i32) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    let (level, name) = if domain == libc::AF_INET6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    // SAFETY: setsockopt reads size_of::<c_int>() bytes from &one.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &one as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The local address in the `*_PKTINFO` message of a received `msghdr`, with
/// `port` (the socket's own) filled in.
///
/// # Safety
/// `msg` must be a header the kernel filled, its control pointer and length
/// describing initialised memory.
pub(super) unsafe fn local_from_control(msg: &libc::msghdr, port: u16) -> Option<SocketAddr> {
    // SAFETY: the CMSG_* macros walk the control buffer within msg_controllen,
    // which the caller promises is initialised.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(data as *const libc::in_pktinfo);
                let ip = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                return Some(SocketAddr::new(IpAddr::V4(ip), port));
            }
            if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_PKTINFO {
                let info = std::ptr::read_unaligned(data as *const libc::in6_pktinfo);
                let ip = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                return Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    0,
                    info.ipi6_ifindex,
                )));
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

/// Fills `control` with a `*_PKTINFO` message asking the kernel to send from
/// local address `addr`; returns the control length for `msg_controllen`.
/// Points a receive's `msghdr` at its addresses: `remote`, a slice of
/// `room` bytes for the sender's address, and with `local`, `control` for
/// the `IP_PKTINFO` that reports the address the datagram was sent to.
pub(super) fn receive_names(
    msg: &mut libc::msghdr,
    remote: Option<(*mut u8, u32)>,
    local: bool,
    control: &mut Control,
) {
    if let Some((name, room)) = remote {
        msg.msg_name = name.cast();
        msg.msg_namelen = room.min(size_of::<libc::sockaddr_storage>() as u32);
    }
    if local {
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = CONTROL_LEN;
    }
}

/// Points a send's `msghdr` at its addresses: `remote`, `len` bytes of the
/// address to send to, and `local` as `IP_PKTINFO` in `control` (left out
/// when it cannot be, as for a family the socket does not have).
pub(super) fn send_names(
    msg: &mut libc::msghdr,
    remote: Option<(*const u8, u32)>,
    local: Option<&SocketAddr>,
    control: &mut Control,
) {
    if let Some((name, len)) = remote {
        msg.msg_name = name.cast_mut().cast();
        msg.msg_namelen = len;
    }
    if let Some(local) = local {
        if let Ok(n) = pktinfo_for_send(control, local) {
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = n;
        }
    }
}

pub(super) fn pktinfo_for_send(control: &mut Control, addr: &SocketAddr) -> Result<usize, Error> {
    control.0 = [0; CONTROL_LEN];
    // A header on the stack: the CMSG_* macros only need its control fields.
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
    let (level, kind, data_len) = match addr {
        SocketAddr::V4(_) => (
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            size_of::<libc::in_pktinfo>(),
        ),
        SocketAddr::V6(_) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            size_of::<libc::in6_pktinfo>(),
        ),
    };
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE(data_len as u32) } as usize;
    if space > CONTROL_LEN {
        return Err(Error::InvalidArgument("control message too large"));
    }
    msg.msg_controllen = space;
    // SAFETY: the control buffer is CONTROL_LEN >= space bytes, aligned for
    // cmsghdr (Control is align(8)); CMSG_FIRSTHDR is non-null as
    // msg_controllen >= size_of::<cmsghdr>(); the data written fits in space.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = level;
        (*c).cmsg_type = kind;
        (*c).cmsg_len = libc::CMSG_LEN(data_len as u32) as usize;
        let data = libc::CMSG_DATA(c);
        match addr {
            SocketAddr::V4(a) => {
                // SAFETY: all-zero is a valid in_pktinfo.
                let mut info: libc::in_pktinfo = std::mem::zeroed();
                info.ipi_spec_dst.s_addr = u32::from(*a.ip()).to_be();
                std::ptr::write_unaligned(data as *mut libc::in_pktinfo, info);
            }
            SocketAddr::V6(a) => {
                // SAFETY: all-zero is a valid in6_pktinfo.
                let mut info: libc::in6_pktinfo = std::mem::zeroed();
                info.ipi6_addr.s6_addr = a.ip().octets();
                info.ipi6_ifindex = a.scope_id();
                std::ptr::write_unaligned(data as *mut libc::in6_pktinfo, info);
            }
        }
    }
    Ok(space)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_at_any_offset() {
        let mut buf = [0u8; 64];
        for a in ["127.0.0.1:4242", "[::1]:9"] {
            let a: SocketAddr = a.parse().unwrap();
            let n = write_addr(&mut buf[3..], a).unwrap();
            assert!(n as u32 <= ADDRESS_LEN);
            assert_eq!(read_addr(&buf[3..]), Some(a));
        }
        assert!(write_addr(&mut buf[..10], "[::1]:9".parse().unwrap()).is_err());
    }
}
