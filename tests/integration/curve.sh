# curve — CurveZMQ between hosts: omni-keygen makes key pairs; a stage given
# its key and its peers' public keys serves those peers and refuses anyone
# else (an unknown key, or no encryption at all).
. "$(dirname "$0")/../lib.sh"
TRAFFIC=$ROOT/examples/traffic.jsonl
cd "$T"

check "omni-keygen makes a server key pair" "$BIN/omni-keygen" server
check "omni-keygen makes a client key pair" "$BIN/omni-keygen" client
check "omni-keygen makes an intruder's key pair" "$BIN/omni-keygen" intruder
expect "the key file is for its owner only" "$(stat -c %a server.key)" "600"
check "the public file holds only the public key" sh -c "grep -q '^public ' server.pub && ! grep -q secret server.pub"
"$BIN/omni-keygen" server 2>/dev/null
expect "omni-keygen never overwrites a key" "$?" "73"
cp client.pub peers

# Connect only once the server listens: a client reconnecting to a loopback
# port in the ephemeral range before anyone listens can connect to itself.
# A port found free can still be taken before the server binds it: then
# the server exits, saying so, and it is started again on another port.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }
up() { listening || ! kill -0 "$SERVER" 2>/dev/null; }
for try in 1 2 3; do
    PORT=$(free_port)
    spawn "$BIN/omni-relay" --in "@tcp://127.0.0.1:$PORT" --out - --curve-key server.key --curve-peers peers \
        >"$T/served.mp" 2>"$T/server.err"
    SERVER=$SPAWNED
    wait_until 20 up
    listening && break
    echo "# try $try: the server did not start: $(head -c 300 "$T/server.err")"
done
check "the server listens" listening
timeout 60 "$BIN/omni-inject" "$TRAFFIC" --out ">tcp://127.0.0.1:$PORT" --curve-key client.key \
    --curve-server server.pub 2>/dev/null
expect "an admitted client is served" "$?" "0"
# Refused clients never complete the handshake: their sends wait; stop them.
timeout 3 "$BIN/omni-inject" "$TRAFFIC" --out ">tcp://127.0.0.1:$PORT" --curve-key intruder.key \
    --curve-server server.pub --linger 0 2>/dev/null
check "an unknown key does not get through (the sender waits)" test "$?" -ne 0
timeout 3 "$BIN/omni-inject" "$TRAFFIC" --out ">tcp://127.0.0.1:$PORT" --linger 0 2>/dev/null
check "a client without encryption does not get through" test "$?" -ne 0
sleep 0.5
kill -TERM "$SERVER"
wait "$SERVER"
expect "the server got exactly the admitted client's messages" "$("$BIN/omni-tap" --count <"$T/served.mp")" "340"
check "the refusal is logged with the key" grep -qF "refused a CURVE client key=$(sed -n 's/^public //p' intruder.pub)" \
    "$T/server.err"
"$BIN/omni-relay" --in "@tcp://127.0.0.1:$(free_port)" --curve-peers peers --check 2>/dev/null
expect "--curve-peers without --curve-key is a usage error" "$?" "64"
"$BIN/omni-relay" --in "@tcp://127.0.0.1:$(free_port)" --curve-key client.pub 2>"$T/nokey.err"
expect "a public-only file as --curve-key is refused" "$?" "78"
check "and the reason is given" grep -q 'no secret key' "$T/nokey.err"
# '#' is a Z85 character: a key holding one is a key, not a comment.
printf '# admitted clients\nabcdefghij#klmnopqrstuvwxyz0123456789ABC\npublic %s\n' \
    "$(sed -n 's/^public //p' client.pub)" >"$T/hashpeers"
check "a peers file with '#' inside a key, and comment lines, is accepted" \
    "$BIN/omni-relay" --in "@tcp://127.0.0.1:$(free_port)" --curve-key server.key --curve-peers "$T/hashpeers" --check
