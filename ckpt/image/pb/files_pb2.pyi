# Regenerate with `python -m ckpt.image.protogen` (or `make proto`); do not edit.
from ckpt.image.pb import common_pb2 as _common_pb2
from ckpt.image.pb import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FdEntry(_message.Message):
    __slots__ = ("fd", "fd_flags", "file_id", "locks")
    FD_FIELD_NUMBER: _ClassVar[int]
    FD_FLAGS_FIELD_NUMBER: _ClassVar[int]
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    LOCKS_FIELD_NUMBER: _ClassVar[int]
    fd: int
    fd_flags: int
    file_id: int
    locks: _containers.RepeatedCompositeFieldContainer[FileLock]
    def __init__(self, fd: _Optional[int] = ..., fd_flags: _Optional[int] = ..., file_id: _Optional[int] = ..., locks: _Optional[_Iterable[_Union[FileLock, _Mapping]]] = ...) -> None: ...

class FileLock(_message.Message):
    __slots__ = ("kind", "type", "start", "length", "pid")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[FileLock.Kind]
        POSIX: _ClassVar[FileLock.Kind]
        OFD: _ClassVar[FileLock.Kind]
        FLOCK: _ClassVar[FileLock.Kind]
        LEASE: _ClassVar[FileLock.Kind]
    KIND_UNSPECIFIED: FileLock.Kind
    POSIX: FileLock.Kind
    OFD: FileLock.Kind
    FLOCK: FileLock.Kind
    LEASE: FileLock.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    kind: FileLock.Kind
    type: int
    start: int
    length: int
    pid: int
    def __init__(self, kind: _Optional[_Union[FileLock.Kind, str]] = ..., type: _Optional[int] = ..., start: _Optional[int] = ..., length: _Optional[int] = ..., pid: _Optional[int] = ...) -> None: ...

class FileEntry(_message.Message):
    __slots__ = ("id", "kind", "path", "flags", "pos", "mnt_id", "identity", "deleted", "content", "fown", "external", "tty", "ghost", "pipe", "unix", "inet", "eventfd", "epoll", "timerfd", "signalfd", "inotify", "memfd", "pty", "pidfd", "proc", "packet", "netlink")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[FileEntry.Kind]
        REG: _ClassVar[FileEntry.Kind]
        DIR: _ClassVar[FileEntry.Kind]
        PIPE: _ClassVar[FileEntry.Kind]
        FIFO: _ClassVar[FileEntry.Kind]
        CHR: _ClassVar[FileEntry.Kind]
        BLK: _ClassVar[FileEntry.Kind]
        UNIX: _ClassVar[FileEntry.Kind]
        INET: _ClassVar[FileEntry.Kind]
        NETLINK: _ClassVar[FileEntry.Kind]
        PACKET: _ClassVar[FileEntry.Kind]
        EVENTFD: _ClassVar[FileEntry.Kind]
        EPOLL: _ClassVar[FileEntry.Kind]
        TIMERFD: _ClassVar[FileEntry.Kind]
        SIGNALFD: _ClassVar[FileEntry.Kind]
        INOTIFY: _ClassVar[FileEntry.Kind]
        FANOTIFY: _ClassVar[FileEntry.Kind]
        MEMFD: _ClassVar[FileEntry.Kind]
        PIDFD: _ClassVar[FileEntry.Kind]
        USERFAULTFD: _ClassVar[FileEntry.Kind]
        OTHER: _ClassVar[FileEntry.Kind]
        PTY: _ClassVar[FileEntry.Kind]
        PATH: _ClassVar[FileEntry.Kind]
        PROC: _ClassVar[FileEntry.Kind]
    KIND_UNSPECIFIED: FileEntry.Kind
    REG: FileEntry.Kind
    DIR: FileEntry.Kind
    PIPE: FileEntry.Kind
    FIFO: FileEntry.Kind
    CHR: FileEntry.Kind
    BLK: FileEntry.Kind
    UNIX: FileEntry.Kind
    INET: FileEntry.Kind
    NETLINK: FileEntry.Kind
    PACKET: FileEntry.Kind
    EVENTFD: FileEntry.Kind
    EPOLL: FileEntry.Kind
    TIMERFD: FileEntry.Kind
    SIGNALFD: FileEntry.Kind
    INOTIFY: FileEntry.Kind
    FANOTIFY: FileEntry.Kind
    MEMFD: FileEntry.Kind
    PIDFD: FileEntry.Kind
    USERFAULTFD: FileEntry.Kind
    OTHER: FileEntry.Kind
    PTY: FileEntry.Kind
    PATH: FileEntry.Kind
    PROC: FileEntry.Kind
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    POS_FIELD_NUMBER: _ClassVar[int]
    MNT_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    FOWN_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    GHOST_FIELD_NUMBER: _ClassVar[int]
    PIPE_FIELD_NUMBER: _ClassVar[int]
    UNIX_FIELD_NUMBER: _ClassVar[int]
    INET_FIELD_NUMBER: _ClassVar[int]
    EVENTFD_FIELD_NUMBER: _ClassVar[int]
    EPOLL_FIELD_NUMBER: _ClassVar[int]
    TIMERFD_FIELD_NUMBER: _ClassVar[int]
    SIGNALFD_FIELD_NUMBER: _ClassVar[int]
    INOTIFY_FIELD_NUMBER: _ClassVar[int]
    MEMFD_FIELD_NUMBER: _ClassVar[int]
    PTY_FIELD_NUMBER: _ClassVar[int]
    PIDFD_FIELD_NUMBER: _ClassVar[int]
    PROC_FIELD_NUMBER: _ClassVar[int]
    PACKET_FIELD_NUMBER: _ClassVar[int]
    NETLINK_FIELD_NUMBER: _ClassVar[int]
    id: int
    kind: FileEntry.Kind
    path: str
    flags: int
    pos: int
    mnt_id: int
    identity: _common_pb2.FileIdentity
    deleted: bool
    content: _common_pb2.ContentRef
    fown: Fown
    external: str
    tty: bool
    ghost: _common_pb2.Ghost
    pipe: Pipe
    unix: UnixSocket
    inet: InetSocket
    eventfd: EventFd
    epoll: Epoll
    timerfd: TimerFd
    signalfd: SignalFd
    inotify: Inotify
    memfd: MemFd
    pty: Pty
    pidfd: PidFd
    proc: ProcFile
    packet: PacketSocket
    netlink: NetlinkSocket
    def __init__(self, id: _Optional[int] = ..., kind: _Optional[_Union[FileEntry.Kind, str]] = ..., path: _Optional[str] = ..., flags: _Optional[int] = ..., pos: _Optional[int] = ..., mnt_id: _Optional[int] = ..., identity: _Optional[_Union[_common_pb2.FileIdentity, _Mapping]] = ..., deleted: _Optional[bool] = ..., content: _Optional[_Union[_common_pb2.ContentRef, _Mapping]] = ..., fown: _Optional[_Union[Fown, _Mapping]] = ..., external: _Optional[str] = ..., tty: _Optional[bool] = ..., ghost: _Optional[_Union[_common_pb2.Ghost, _Mapping]] = ..., pipe: _Optional[_Union[Pipe, _Mapping]] = ..., unix: _Optional[_Union[UnixSocket, _Mapping]] = ..., inet: _Optional[_Union[InetSocket, _Mapping]] = ..., eventfd: _Optional[_Union[EventFd, _Mapping]] = ..., epoll: _Optional[_Union[Epoll, _Mapping]] = ..., timerfd: _Optional[_Union[TimerFd, _Mapping]] = ..., signalfd: _Optional[_Union[SignalFd, _Mapping]] = ..., inotify: _Optional[_Union[Inotify, _Mapping]] = ..., memfd: _Optional[_Union[MemFd, _Mapping]] = ..., pty: _Optional[_Union[Pty, _Mapping]] = ..., pidfd: _Optional[_Union[PidFd, _Mapping]] = ..., proc: _Optional[_Union[ProcFile, _Mapping]] = ..., packet: _Optional[_Union[PacketSocket, _Mapping]] = ..., netlink: _Optional[_Union[NetlinkSocket, _Mapping]] = ...) -> None: ...

class Fown(_message.Message):
    __slots__ = ("pid", "pid_type", "signum", "uid", "euid")
    PID_FIELD_NUMBER: _ClassVar[int]
    PID_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIGNUM_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    EUID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    pid_type: int
    signum: int
    uid: int
    euid: int
    def __init__(self, pid: _Optional[int] = ..., pid_type: _Optional[int] = ..., signum: _Optional[int] = ..., uid: _Optional[int] = ..., euid: _Optional[int] = ...) -> None: ...

class Pipe(_message.Message):
    __slots__ = ("pipe_id", "capacity", "data")
    PIPE_ID_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    pipe_id: int
    capacity: int
    data: bytes
    def __init__(self, pipe_id: _Optional[int] = ..., capacity: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UnixSocket(_message.Message):
    __slots__ = ("ino", "type", "state", "name", "peer_ino", "backlog", "shutdown", "queue", "options", "peer_name", "listener_ino", "pending", "name_inherited", "in_flight", "file_mode", "file_uid", "file_gid", "ext_closed", "name_unlinked", "senders")
    INO_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PEER_INO_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    PEER_NAME_FIELD_NUMBER: _ClassVar[int]
    LISTENER_INO_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    NAME_INHERITED_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    FILE_MODE_FIELD_NUMBER: _ClassVar[int]
    FILE_UID_FIELD_NUMBER: _ClassVar[int]
    FILE_GID_FIELD_NUMBER: _ClassVar[int]
    EXT_CLOSED_FIELD_NUMBER: _ClassVar[int]
    NAME_UNLINKED_FIELD_NUMBER: _ClassVar[int]
    SENDERS_FIELD_NUMBER: _ClassVar[int]
    ino: int
    type: int
    state: int
    name: bytes
    peer_ino: int
    backlog: int
    shutdown: int
    queue: _containers.RepeatedScalarFieldContainer[bytes]
    options: _containers.RepeatedCompositeFieldContainer[SockOpt]
    peer_name: bytes
    listener_ino: int
    pending: _containers.RepeatedScalarFieldContainer[int]
    name_inherited: bool
    in_flight: _containers.RepeatedCompositeFieldContainer[InFlight]
    file_mode: int
    file_uid: int
    file_gid: int
    ext_closed: bool
    name_unlinked: bool
    senders: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ino: _Optional[int] = ..., type: _Optional[int] = ..., state: _Optional[int] = ..., name: _Optional[bytes] = ..., peer_ino: _Optional[int] = ..., backlog: _Optional[int] = ..., shutdown: _Optional[int] = ..., queue: _Optional[_Iterable[bytes]] = ..., options: _Optional[_Iterable[_Union[SockOpt, _Mapping]]] = ..., peer_name: _Optional[bytes] = ..., listener_ino: _Optional[int] = ..., pending: _Optional[_Iterable[int]] = ..., name_inherited: _Optional[bool] = ..., in_flight: _Optional[_Iterable[_Union[InFlight, _Mapping]]] = ..., file_mode: _Optional[int] = ..., file_uid: _Optional[int] = ..., file_gid: _Optional[int] = ..., ext_closed: _Optional[bool] = ..., name_unlinked: _Optional[bool] = ..., senders: _Optional[_Iterable[int]] = ...) -> None: ...

class InFlight(_message.Message):
    __slots__ = ("index", "file_ids")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FILE_IDS_FIELD_NUMBER: _ClassVar[int]
    index: int
    file_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, index: _Optional[int] = ..., file_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class InetSocket(_message.Message):
    __slots__ = ("family", "type", "protocol", "state", "src_addr", "src_port", "dst_addr", "dst_port", "backlog", "shutdown", "tcp", "options", "tcp_closed", "queue_lost", "memberships", "handed_over")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SRC_ADDR_FIELD_NUMBER: _ClassVar[int]
    SRC_PORT_FIELD_NUMBER: _ClassVar[int]
    DST_ADDR_FIELD_NUMBER: _ClassVar[int]
    DST_PORT_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    TCP_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    TCP_CLOSED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LOST_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIPS_FIELD_NUMBER: _ClassVar[int]
    HANDED_OVER_FIELD_NUMBER: _ClassVar[int]
    family: int
    type: int
    protocol: int
    state: int
    src_addr: bytes
    src_port: int
    dst_addr: bytes
    dst_port: int
    backlog: int
    shutdown: int
    tcp: TcpRepair
    options: _containers.RepeatedCompositeFieldContainer[SockOpt]
    tcp_closed: bool
    queue_lost: bool
    memberships: _containers.RepeatedCompositeFieldContainer[McastMembership]
    handed_over: bool
    def __init__(self, family: _Optional[int] = ..., type: _Optional[int] = ..., protocol: _Optional[int] = ..., state: _Optional[int] = ..., src_addr: _Optional[bytes] = ..., src_port: _Optional[int] = ..., dst_addr: _Optional[bytes] = ..., dst_port: _Optional[int] = ..., backlog: _Optional[int] = ..., shutdown: _Optional[int] = ..., tcp: _Optional[_Union[TcpRepair, _Mapping]] = ..., options: _Optional[_Iterable[_Union[SockOpt, _Mapping]]] = ..., tcp_closed: _Optional[bool] = ..., queue_lost: _Optional[bool] = ..., memberships: _Optional[_Iterable[_Union[McastMembership, _Mapping]]] = ..., handed_over: _Optional[bool] = ...) -> None: ...

class McastMembership(_message.Message):
    __slots__ = ("family", "ifname", "group", "mode", "sources")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    family: int
    ifname: str
    group: str
    mode: int
    sources: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, family: _Optional[int] = ..., ifname: _Optional[str] = ..., group: _Optional[str] = ..., mode: _Optional[int] = ..., sources: _Optional[_Iterable[str]] = ...) -> None: ...

class TcpRepair(_message.Message):
    __slots__ = ("snd_seq", "rcv_seq", "send_queue", "recv_queue", "mss", "snd_wscale", "rcv_wscale", "timestamp", "options", "snd_wnd", "rcv_wnd", "unsent", "snd_wl1", "max_window", "rcv_wup", "lock", "sndbuf", "rcvbuf", "netns", "fin_queued", "shut_rd")
    SND_SEQ_FIELD_NUMBER: _ClassVar[int]
    RCV_SEQ_FIELD_NUMBER: _ClassVar[int]
    SEND_QUEUE_FIELD_NUMBER: _ClassVar[int]
    RECV_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MSS_FIELD_NUMBER: _ClassVar[int]
    SND_WSCALE_FIELD_NUMBER: _ClassVar[int]
    RCV_WSCALE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SND_WND_FIELD_NUMBER: _ClassVar[int]
    RCV_WND_FIELD_NUMBER: _ClassVar[int]
    UNSENT_FIELD_NUMBER: _ClassVar[int]
    SND_WL1_FIELD_NUMBER: _ClassVar[int]
    MAX_WINDOW_FIELD_NUMBER: _ClassVar[int]
    RCV_WUP_FIELD_NUMBER: _ClassVar[int]
    LOCK_FIELD_NUMBER: _ClassVar[int]
    SNDBUF_FIELD_NUMBER: _ClassVar[int]
    RCVBUF_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    FIN_QUEUED_FIELD_NUMBER: _ClassVar[int]
    SHUT_RD_FIELD_NUMBER: _ClassVar[int]
    snd_seq: int
    rcv_seq: int
    send_queue: bytes
    recv_queue: bytes
    mss: int
    snd_wscale: int
    rcv_wscale: int
    timestamp: int
    options: int
    snd_wnd: int
    rcv_wnd: int
    unsent: int
    snd_wl1: int
    max_window: int
    rcv_wup: int
    lock: str
    sndbuf: int
    rcvbuf: int
    netns: str
    fin_queued: bool
    shut_rd: bool
    def __init__(self, snd_seq: _Optional[int] = ..., rcv_seq: _Optional[int] = ..., send_queue: _Optional[bytes] = ..., recv_queue: _Optional[bytes] = ..., mss: _Optional[int] = ..., snd_wscale: _Optional[int] = ..., rcv_wscale: _Optional[int] = ..., timestamp: _Optional[int] = ..., options: _Optional[int] = ..., snd_wnd: _Optional[int] = ..., rcv_wnd: _Optional[int] = ..., unsent: _Optional[int] = ..., snd_wl1: _Optional[int] = ..., max_window: _Optional[int] = ..., rcv_wup: _Optional[int] = ..., lock: _Optional[str] = ..., sndbuf: _Optional[int] = ..., rcvbuf: _Optional[int] = ..., netns: _Optional[str] = ..., fin_queued: _Optional[bool] = ..., shut_rd: _Optional[bool] = ...) -> None: ...

class SockOpt(_message.Message):
    __slots__ = ("level", "name", "value")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    level: int
    name: int
    value: bytes
    def __init__(self, level: _Optional[int] = ..., name: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...

class EventFd(_message.Message):
    __slots__ = ("counter", "flags")
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    counter: int
    flags: int
    def __init__(self, counter: _Optional[int] = ..., flags: _Optional[int] = ...) -> None: ...

class Epoll(_message.Message):
    __slots__ = ("targets",)
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    targets: _containers.RepeatedCompositeFieldContainer[EpollTarget]
    def __init__(self, targets: _Optional[_Iterable[_Union[EpollTarget, _Mapping]]] = ...) -> None: ...

class EpollTarget(_message.Message):
    __slots__ = ("fd", "file_id", "events", "data")
    FD_FIELD_NUMBER: _ClassVar[int]
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    fd: int
    file_id: int
    events: int
    data: int
    def __init__(self, fd: _Optional[int] = ..., file_id: _Optional[int] = ..., events: _Optional[int] = ..., data: _Optional[int] = ...) -> None: ...

class TimerFd(_message.Message):
    __slots__ = ("clockid", "settime_flags", "ticks", "value_ns", "interval_ns", "expires_ns")
    CLOCKID_FIELD_NUMBER: _ClassVar[int]
    SETTIME_FLAGS_FIELD_NUMBER: _ClassVar[int]
    TICKS_FIELD_NUMBER: _ClassVar[int]
    VALUE_NS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_NS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_NS_FIELD_NUMBER: _ClassVar[int]
    clockid: int
    settime_flags: int
    ticks: int
    value_ns: int
    interval_ns: int
    expires_ns: int
    def __init__(self, clockid: _Optional[int] = ..., settime_flags: _Optional[int] = ..., ticks: _Optional[int] = ..., value_ns: _Optional[int] = ..., interval_ns: _Optional[int] = ..., expires_ns: _Optional[int] = ...) -> None: ...

class SignalFd(_message.Message):
    __slots__ = ("sigmask",)
    SIGMASK_FIELD_NUMBER: _ClassVar[int]
    sigmask: int
    def __init__(self, sigmask: _Optional[int] = ...) -> None: ...

class Inotify(_message.Message):
    __slots__ = ("watches",)
    WATCHES_FIELD_NUMBER: _ClassVar[int]
    watches: _containers.RepeatedCompositeFieldContainer[InotifyWatch]
    def __init__(self, watches: _Optional[_Iterable[_Union[InotifyWatch, _Mapping]]] = ...) -> None: ...

class InotifyWatch(_message.Message):
    __slots__ = ("wd", "mask", "path", "target")
    WD_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    wd: int
    mask: int
    path: str
    target: _common_pb2.FileIdentity
    def __init__(self, wd: _Optional[int] = ..., mask: _Optional[int] = ..., path: _Optional[str] = ..., target: _Optional[_Union[_common_pb2.FileIdentity, _Mapping]] = ...) -> None: ...

class MemFd(_message.Message):
    __slots__ = ("name", "seals", "shmem_id", "uid", "gid", "huge_page_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SEALS_FIELD_NUMBER: _ClassVar[int]
    SHMEM_ID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    HUGE_PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    seals: int
    shmem_id: int
    uid: int
    gid: int
    huge_page_size: int
    def __init__(self, name: _Optional[str] = ..., seals: _Optional[int] = ..., shmem_id: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., huge_page_size: _Optional[int] = ...) -> None: ...

class Pty(_message.Message):
    __slots__ = ("index", "master", "pair", "via_ctty")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MASTER_FIELD_NUMBER: _ClassVar[int]
    PAIR_FIELD_NUMBER: _ClassVar[int]
    VIA_CTTY_FIELD_NUMBER: _ClassVar[int]
    index: int
    master: bool
    pair: PtyPair
    via_ctty: bool
    def __init__(self, index: _Optional[int] = ..., master: _Optional[bool] = ..., pair: _Optional[_Union[PtyPair, _Mapping]] = ..., via_ctty: _Optional[bool] = ...) -> None: ...

class PtyPair(_message.Message):
    __slots__ = ("termios", "winsize", "packet", "locked", "master_exclusive", "slave_exclusive", "input", "partial", "output")
    TERMIOS_FIELD_NUMBER: _ClassVar[int]
    WINSIZE_FIELD_NUMBER: _ClassVar[int]
    PACKET_FIELD_NUMBER: _ClassVar[int]
    LOCKED_FIELD_NUMBER: _ClassVar[int]
    MASTER_EXCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    SLAVE_EXCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    termios: Termios
    winsize: Winsize
    packet: bool
    locked: bool
    master_exclusive: bool
    slave_exclusive: bool
    input: _containers.RepeatedCompositeFieldContainer[PtyInput]
    partial: bytes
    output: bytes
    def __init__(self, termios: _Optional[_Union[Termios, _Mapping]] = ..., winsize: _Optional[_Union[Winsize, _Mapping]] = ..., packet: _Optional[bool] = ..., locked: _Optional[bool] = ..., master_exclusive: _Optional[bool] = ..., slave_exclusive: _Optional[bool] = ..., input: _Optional[_Iterable[_Union[PtyInput, _Mapping]]] = ..., partial: _Optional[bytes] = ..., output: _Optional[bytes] = ...) -> None: ...

class PtyInput(_message.Message):
    __slots__ = ("data", "eof")
    DATA_FIELD_NUMBER: _ClassVar[int]
    EOF_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    eof: bool
    def __init__(self, data: _Optional[bytes] = ..., eof: _Optional[bool] = ...) -> None: ...

class Termios(_message.Message):
    __slots__ = ("iflag", "oflag", "cflag", "lflag", "line", "cc", "ispeed", "ospeed")
    IFLAG_FIELD_NUMBER: _ClassVar[int]
    OFLAG_FIELD_NUMBER: _ClassVar[int]
    CFLAG_FIELD_NUMBER: _ClassVar[int]
    LFLAG_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    CC_FIELD_NUMBER: _ClassVar[int]
    ISPEED_FIELD_NUMBER: _ClassVar[int]
    OSPEED_FIELD_NUMBER: _ClassVar[int]
    iflag: int
    oflag: int
    cflag: int
    lflag: int
    line: int
    cc: bytes
    ispeed: int
    ospeed: int
    def __init__(self, iflag: _Optional[int] = ..., oflag: _Optional[int] = ..., cflag: _Optional[int] = ..., lflag: _Optional[int] = ..., line: _Optional[int] = ..., cc: _Optional[bytes] = ..., ispeed: _Optional[int] = ..., ospeed: _Optional[int] = ...) -> None: ...

class Winsize(_message.Message):
    __slots__ = ("row", "col", "xpixel", "ypixel")
    ROW_FIELD_NUMBER: _ClassVar[int]
    COL_FIELD_NUMBER: _ClassVar[int]
    XPIXEL_FIELD_NUMBER: _ClassVar[int]
    YPIXEL_FIELD_NUMBER: _ClassVar[int]
    row: int
    col: int
    xpixel: int
    ypixel: int
    def __init__(self, row: _Optional[int] = ..., col: _Optional[int] = ..., xpixel: _Optional[int] = ..., ypixel: _Optional[int] = ...) -> None: ...

class PidFd(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class ProcFile(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class PacketSocket(_message.Message):
    __slots__ = ("type", "protocol", "ifindex", "ifname", "options", "memberships", "copy_thresh", "queue_lost")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    IFINDEX_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIPS_FIELD_NUMBER: _ClassVar[int]
    COPY_THRESH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LOST_FIELD_NUMBER: _ClassVar[int]
    type: int
    protocol: int
    ifindex: int
    ifname: str
    options: _containers.RepeatedCompositeFieldContainer[SockOpt]
    memberships: _containers.RepeatedCompositeFieldContainer[PacketMembership]
    copy_thresh: int
    queue_lost: bool
    def __init__(self, type: _Optional[int] = ..., protocol: _Optional[int] = ..., ifindex: _Optional[int] = ..., ifname: _Optional[str] = ..., options: _Optional[_Iterable[_Union[SockOpt, _Mapping]]] = ..., memberships: _Optional[_Iterable[_Union[PacketMembership, _Mapping]]] = ..., copy_thresh: _Optional[int] = ..., queue_lost: _Optional[bool] = ...) -> None: ...

class PacketMembership(_message.Message):
    __slots__ = ("ifindex", "ifname", "type", "address", "count")
    IFINDEX_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ifindex: int
    ifname: str
    type: int
    address: bytes
    count: int
    def __init__(self, ifindex: _Optional[int] = ..., ifname: _Optional[str] = ..., type: _Optional[int] = ..., address: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class NetlinkSocket(_message.Message):
    __slots__ = ("type", "protocol", "portid", "groups", "dst_portid", "dst_group", "state", "options", "queue_lost")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PORTID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    DST_PORTID_FIELD_NUMBER: _ClassVar[int]
    DST_GROUP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LOST_FIELD_NUMBER: _ClassVar[int]
    type: int
    protocol: int
    portid: int
    groups: bytes
    dst_portid: int
    dst_group: int
    state: int
    options: _containers.RepeatedCompositeFieldContainer[SockOpt]
    queue_lost: bool
    def __init__(self, type: _Optional[int] = ..., protocol: _Optional[int] = ..., portid: _Optional[int] = ..., groups: _Optional[bytes] = ..., dst_portid: _Optional[int] = ..., dst_group: _Optional[int] = ..., state: _Optional[int] = ..., options: _Optional[_Iterable[_Union[SockOpt, _Mapping]]] = ..., queue_lost: _Optional[bool] = ...) -> None: ...
