//! A ring handed to a client is used only once the client said `mapped`, and is sealed then:
//! the client's mapping keeps writing, but it can no longer punch holes in the ring (which
//! would make the polling core take page faults nothing charges) nor map it writable again.
//! Raw protocol clients in this process, against a daemon on the in-memory link.

#[path = "common/client_examples.rs"]
mod client_examples;

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use client_examples::{config, temp_dir};
use control::protocol::{
    AttachArgs, AttachRole, ChannelInfo, ErrorKind, IdArgs, OpenArgs, Request, TxCounters,
};
use dataplane::shm::{Consumer, DeliverDesc, Producer, Region, SubmitDesc};
use dataplane::time::monotonic_now;
use rtchan::client::{Client, OpenSpec};
use rtchan::daemon::client::Client as Ctl;
use rtchan::daemon::Daemon;

/// Punches the second page of the file; the errno when refused.
fn punch(fd: &OwnedFd) -> Option<i32> {
    // SAFETY: a plain syscall on a live fd; the range is inside the ring's file.
    let rc = unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            4096,
            4096,
        )
    };
    (rc != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap())
}

fn mapped(ctl: &mut Ctl, id: u32, role: AttachRole) -> Result<serde_json::Value, ErrorKind> {
    ctl.call(&Request::Mapped(AttachArgs { id, role }))
        .unwrap()
        .into_result::<serde_json::Value>()
        .map_err(|e| e.kind)
}

fn tx(c: &Client, id: u32) -> TxCounters {
    c.stats(id).unwrap().tx.unwrap()
}

fn send(p: &mut Producer<SubmitDesc>, msg: &[u8]) {
    assert!(p.room() > 0);
    let b = p.grant(|_| {}).expect("a free buffer");
    p.buffer_mut(b)[..msg.len()].copy_from_slice(msg);
    p.push(SubmitDesc {
        buf: b,
        len: msg.len() as u32,
        submit_ts: monotonic_now(),
    });
    p.publish();
}

#[test]
fn a_submit_ring_is_read_only_after_mapped_and_then_cannot_be_punched() {
    let dir = temp_dir("client-seal-send");
    let d = Daemon::start(config(&dir)).unwrap();
    let lib = Client::connect(&d.socket).unwrap();
    let mut ctl = Ctl::connect(&d.socket).unwrap();
    let args = OpenArgs {
        attach: true,
        ..OpenArgs::new(100, 1_000_000, 4, 20_000_000, "local")
    };
    let (reply, mut fds) = ctl.call_with_fds(&Request::Open(args)).unwrap();
    let info: ChannelInfo = reply.into_result().unwrap();
    let fd = fds.pop().expect("the open reply carries the ring");
    let spare = fd.try_clone().unwrap();
    let region = Region::from_fd::<SubmitDesc>(fd).unwrap();
    let mut p = Producer::<SubmitDesc>::new(region).unwrap();
    send(&mut p, b"before mapped");
    // The core iterates every few tens of microseconds: 100 ms is thousands of chances to
    // read the ring, and it must take none of them.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(tx(&lib, info.id).submitted, 0, "an unsealed ring was read");
    // Another connection cannot say it mapped this ring; nor can anyone for no channel.
    let mut other = Ctl::connect(&d.socket).unwrap();
    assert_eq!(
        mapped(&mut other, info.id, AttachRole::Send),
        Err(ErrorKind::Invalid)
    );
    assert_eq!(
        mapped(&mut ctl, 999_999, AttachRole::Send),
        Err(ErrorKind::NotFound)
    );
    mapped(&mut ctl, info.id, AttachRole::Send).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while tx(&lib, info.id).sent < 1 {
        assert!(Instant::now() < until, "the mapped ring was not read");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Sealed: no hole, no second writable mapping; the first mapping still writes.
    assert_eq!(punch(&spare), Some(libc::EPERM));
    assert!(Region::from_fd::<SubmitDesc>(spare).is_err());
    send(&mut p, b"after mapped");
    while tx(&lib, info.id).sent < 2 {
        assert!(Instant::now() < until, "the second message was not read");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(tx(&lib, info.id).invalid, 0);
    d.shutdown();
}

#[test]
fn a_delivery_ring_is_used_only_after_mapped_and_then_cannot_be_punched() {
    let dir = temp_dir("client-seal-recv");
    let d = Daemon::start(config(&dir)).unwrap();
    let lib = Client::connect(&d.socket).unwrap();
    let spec = OpenSpec::new(100, Duration::from_millis(1), 4, Duration::from_millis(20));
    let mut sender = lib.open(&spec).unwrap();
    let id = sender.id();
    let mut ctl = Ctl::connect(&d.socket).unwrap();
    let (reply, mut fds) = ctl
        .call_with_fds(&Request::Attach(AttachArgs {
            id,
            role: AttachRole::Recv,
        }))
        .unwrap();
    reply.into_result::<serde_json::Value>().unwrap();
    assert_eq!(fds.len(), 1, "the delivery ring");
    let fd = fds.pop().unwrap();
    let spare = fd.try_clone().unwrap();
    let region = Region::from_fd::<DeliverDesc>(fd).unwrap();
    let c = Consumer::<DeliverDesc>::new(region).unwrap();
    // Not mapped yet: the daemon's own receiver still has the channel.
    sender.send(b"to the sink").unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while lib.stats(id).unwrap().rx.map_or(0, |r| r.delivered) < 1 {
        assert!(Instant::now() < until, "the first message was not received");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(c.take(|_| {}).is_none(), "delivered into an unsealed ring");
    mapped(&mut ctl, id, AttachRole::Recv).unwrap();
    mapped(&mut ctl, id, AttachRole::Recv).unwrap(); // again: nothing more to do
    assert_eq!(punch(&spare), Some(libc::EPERM));
    sender.send(b"to the client").unwrap();
    let got = loop {
        if let Some(t) = c.take(|_| {}) {
            let b = c.bytes(&t).to_vec();
            c.release(t);
            break b;
        }
        assert!(
            Instant::now() < until,
            "nothing delivered into the mapped ring"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(got, b"to the client");
    // The channel's receiving counters go on across the switch to the client's ring, and
    // across the detach back to the daemon's own receiver.
    let delivered = |n: u64| {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let d = lib.stats(id).unwrap().rx.map_or(0, |r| r.delivered);
            if d >= n || Instant::now() > until {
                return d;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    assert_eq!(delivered(2), 2);
    ctl.call(&Request::Detach(IdArgs { id }))
        .unwrap()
        .into_result::<serde_json::Value>()
        .unwrap();
    sender.send(b"to the sink again").unwrap();
    assert_eq!(delivered(3), 3);
    drop(sender);
    d.shutdown();
}
