-- Wireshark dissector for rtchan (real-time channels), UDP port 7447.
--
-- The 40-byte rtchan header follows Ethernet / IPv4 / UDP (docs/wire.md,
-- dataplane/src/port/wire.rs). All fields are big-endian.
--
--   +0  u8   version (1)           +12 u32  message sequence number
--   +1  u8   flags (bit 0: b-e)    +16 u32  message length
--   +2  u16  fragment index        +20 u32  fragment offset
--   +4  u16  fragment count        +24 u64  submit timestamp (ns, sender's CLOCK_MONOTONIC)
--   +6  u16  fragment length       +32 u64  deadline (ns, same clock; 0: none)
--   +8  u32  channel id
--
-- Install: copy this file into your personal Lua plugins folder (Help > About Wireshark >
-- Folders > "Personal Lua Plugins", e.g. ~/.local/lib/wireshark/plugins/) and restart
-- Wireshark, or run once with `wireshark -X lua_script:rtchan.lua` /
-- `tshark -X lua_script:rtchan.lua -r capture.pcap`.
--
-- Deadlines are on the sender's CLOCK_MONOTONIC, captures on the wall clock. The preference
-- "Clock offset" (Edit > Preferences > Protocols > RTCHAN) is wall minus monotonic time in
-- seconds (`python3 -c 'import time; print(time.time() - time.monotonic())'` on the sender);
-- "auto" (the default) estimates it as the least capture-minus-submit time of the frames seen
-- so far, which errs towards calling a frame on time. A frame captured after its deadline gets
-- the expert warning "deadline already past at capture time". A frame too short for the
-- header is marked malformed (expert error) with whatever fields it holds.

local rtchan = Proto("rtchan", "rtchan real-time channel")

local f = {
    version     = ProtoField.uint8("rtchan.version", "Version", base.DEC),
    flags       = ProtoField.uint8("rtchan.flags", "Flags", base.HEX),
    best_effort = ProtoField.bool("rtchan.flags.best_effort", "Best-effort", 8, nil, 0x01),
    frag_index  = ProtoField.uint16("rtchan.frag_index", "Fragment index", base.DEC),
    frag_count  = ProtoField.uint16("rtchan.frag_count", "Fragment count", base.DEC),
    frag_len    = ProtoField.uint16("rtchan.frag_len", "Fragment length", base.DEC),
    channel     = ProtoField.uint32("rtchan.channel", "Channel", base.DEC),
    seq         = ProtoField.uint32("rtchan.seq", "Message sequence", base.DEC),
    msg_len     = ProtoField.uint32("rtchan.msg_len", "Message length", base.DEC),
    frag_offset = ProtoField.uint32("rtchan.frag_offset", "Fragment offset", base.DEC),
    submit_ts   = ProtoField.uint64("rtchan.submit_ts", "Submit timestamp (ns)", base.DEC),
    deadline    = ProtoField.uint64("rtchan.deadline", "Deadline (ns)", base.DEC),
    slack       = ProtoField.double("rtchan.slack", "Time to deadline at capture (s)"),
    payload     = ProtoField.bytes("rtchan.payload", "Payload"),
}
rtchan.fields = f

local e_past = ProtoExpert.new("rtchan.deadline_past", "deadline already past at capture time",
    expert.group.SEQUENCE, expert.severity.WARN)
local e_short = ProtoExpert.new("rtchan.truncated", "truncated rtchan header (malformed)",
    expert.group.MALFORMED, expert.severity.ERROR)
local e_version = ProtoExpert.new("rtchan.bad_version", "unknown rtchan version",
    expert.group.MALFORMED, expert.severity.ERROR)
rtchan.experts = { e_past, e_short, e_version }

rtchan.prefs.clock_offset = Pref.string("Clock offset",
    "auto", "Wall clock minus the sender's CLOCK_MONOTONIC, seconds, or auto")

local HEADER = 40
local least_delay = nil -- auto offset: least (capture - submit) seen, seconds

function rtchan.init()
    least_delay = nil
end

-- (offset, length, field) in header order; a truncated frame shows the fields it holds.
local layout = {
    { 0, 1, f.version }, { 1, 1, f.flags }, { 2, 2, f.frag_index }, { 4, 2, f.frag_count },
    { 6, 2, f.frag_len }, { 8, 4, f.channel }, { 12, 4, f.seq }, { 16, 4, f.msg_len },
    { 20, 4, f.frag_offset }, { 24, 8, f.submit_ts }, { 32, 8, f.deadline },
}

function rtchan.dissector(buf, pinfo, tree)
    local len = buf:len()
    pinfo.cols.protocol = "RTCHAN"
    local t = tree:add(rtchan, buf(0, math.min(len, HEADER)))
    for _, l in ipairs(layout) do
        if l[1] + l[2] > len then
            break
        end
        local item = t:add(l[3], buf(l[1], l[2]))
        if l[3] == f.flags then
            item:add(f.best_effort, buf(1, 1))
        end
    end
    if len < HEADER then
        t:add_proto_expert_info(e_short,
            string.format("truncated rtchan header: %d of %d bytes", len, HEADER))
        pinfo.cols.info = string.format("rtchan truncated header (%d of %d bytes)", len, HEADER)
        return len
    end
    if buf(0, 1):uint() ~= 1 then
        t:add_proto_expert_info(e_version)
    end
    local channel = buf(8, 4):uint()
    local seq = buf(12, 4):uint()
    local idx, count = buf(2, 2):uint(), buf(4, 2):uint()
    local submit = buf(24, 8):uint64():tonumber() / 1e9
    local deadline_ns = buf(32, 8):uint64()
    local frag_len = buf(6, 2):uint()
    if len > HEADER then
        t:add(f.payload, buf(HEADER, math.min(frag_len, len - HEADER)))
    end
    local capture = pinfo.abs_ts
    local offset = tonumber(rtchan.prefs.clock_offset)
    if offset == nil then
        local d = capture - submit
        if least_delay == nil or d < least_delay then
            least_delay = d
        end
        offset = least_delay
    end
    local info = string.format("ch %d seq %d frag %d/%d", channel, seq, idx, count)
    if deadline_ns ~= UInt64(0) then
        local slack = deadline_ns:tonumber() / 1e9 - (capture - offset)
        t:add(f.slack, slack):set_generated()
        if slack < 0 then
            t:add_proto_expert_info(e_past,
                string.format("deadline already past at capture time (by %.6f s)", -slack))
            info = info .. " [deadline past]"
        end
    else
        info = info .. " best-effort"
    end
    pinfo.cols.info = info
    return len
end

DissectorTable.get("udp.port"):add(7447, rtchan)
