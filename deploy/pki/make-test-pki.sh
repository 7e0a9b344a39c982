#!/bin/sh
# make-test-pki.sh — a test PKI for mwcharge: one CA and the certificates that OCPP security
# profiles 2 and 3 and MQTT over TLS need. For labs, commissioning tests and the test suite;
# a production site uses its operator's PKI (V2G/CSO CA) instead.
#
#   deploy/pki/make-test-pki.sh [options] OUTDIR STATION_ID...
#
# Writes into OUTDIR (created 0700):
#   ca.crt ca.key                    the test CA (CA:TRUE, keyCertSign/cRLSign)
#   csms.crt csms.key                OCPP backend server certificate (serverAuth, SANs,
#                                    CN = first --dns name: the backend's FQDN)
#   broker.crt broker.key            MQTT broker server certificate (serverAuth, SANs)
#   ems.crt ems.key                  energy manager client certificate (clientAuth, CN = --ems)
#   stations/<ID>.crt <ID>.key       one client certificate per station (clientAuth,
#                                    CN = station id, O = --org): OCPP profile 3 and MQTT
#
# Rules followed (OCPP 2.0.1 Part 2 A00.FR / Part 6 TLS checks): X.509 in PEM; every
# certificate has a (random, 128-bit) serial number; the station certificate's subject CN is
# the station id (its unique identity) and O the operator; the backend's CN is its FQDN; keys
# are EC P-256 (default) or RSA 3072 (>= 2048); SHA-256 signatures. TLS >= 1.2 is enforced by
# the servers' configuration, not by the certificates.
#
# Keys are created under umask 077 (mode 0600) and are never world-readable. The script is
# idempotent: files that exist are kept (so a station can be added to an existing PKI by
# running it again with the new id); --force replaces everything, including the CA.
#
# Options:
#   --dns NAME       DNS SAN of the server certificates (repeatable; default: localhost)
#   --ip ADDR        IP SAN of the server certificates (repeatable; default: 127.0.0.1)
#   --days N         validity of the leaf certificates in days (default 825; CA: 2 × N)
#   --key-type T     ec (P-256, default) or rsa (3072 bits)
#   --org NAME       O of the station certificates (default "mwcharge test CSO")
#   --ems NAME       CN of the energy manager certificate = its MQTT user (default "ems")
#   --force          regenerate everything (a new CA, every station), overwriting OUTDIR's files
set -eu

usage() {
    sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//' >&2
    exit 2
}
die() { echo "make-test-pki: $*" >&2; exit 2; }

dns=""
ips=""
days=825
key_type=ec
org="mwcharge test CSO"
ems=ems
force=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dns) [ $# -ge 2 ] || die "--dns needs a value"; dns="$dns $2"; shift 2 ;;
        --ip) [ $# -ge 2 ] || die "--ip needs a value"; ips="$ips $2"; shift 2 ;;
        --days) [ $# -ge 2 ] || die "--days needs a value"; days=$2; shift 2 ;;
        --key-type) [ $# -ge 2 ] || die "--key-type needs a value"; key_type=$2; shift 2 ;;
        --org) [ $# -ge 2 ] || die "--org needs a value"; org=$2; shift 2 ;;
        --ems) [ $# -ge 2 ] || die "--ems needs a value"; ems=$2; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || die "usage: make-test-pki.sh [options] OUTDIR STATION_ID... (see --help)"
out=$1
shift
[ -n "$dns" ] || dns=localhost
[ -n "$ips" ] || ips=127.0.0.1
case "$days" in ''|*[!0-9]*) die "--days must be a positive integer, got '$days'" ;; esac
[ "$days" -ge 1 ] || die "--days must be at least 1"
case "$key_type" in ec|rsa) ;; *) die "--key-type must be ec or rsa, got '$key_type'" ;; esac
command -v openssl >/dev/null 2>&1 || die "openssl not found"

# An identity becomes a certificate CN and an MQTT user name (the broker's ACL pattern %u):
# OCPP identifier characters only, no '/', '+', '#' (OCPP: at most 48 characters).
check_id() {
    case "$1" in
        ''|*[!A-Za-z0-9._:*-]*) die "$2 '$1': use letters, digits and . _ : * - only" ;;
    esac
    [ "${#1}" -le 48 ] || die "$2 '$1' is longer than 48 characters"
}
for id in "$@"; do check_id "$id" "station id"; done
check_id "$ems" "--ems name"
case "$org" in *[/\\=+,]*) die "--org must not contain / \\ = + ," ;; esac
for ip in $ips; do
    case "$ip" in *[!0-9a-fA-F.:]*) die "--ip '$ip' is not an IP address" ;; esac
done
for d in $dns; do
    case "$d" in *[!A-Za-z0-9.*-]*) die "--dns '$d' is not a host name" ;; esac
done

umask 077
mkdir -p "$out/stations"
chmod 0700 "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

if [ "$force" -eq 1 ]; then
    rm -f "$out"/ca.crt "$out"/ca.key "$out"/csms.crt "$out"/csms.key "$out"/broker.crt \
        "$out"/broker.key "$out"/ems.crt "$out"/ems.key
    rm -f "$out"/stations/*.crt "$out"/stations/*.key
fi

new_key() {  # $1: path; mode 0600 through umask 077
    if [ "$key_type" = ec ]; then
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    else
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out "$1" 2>/dev/null
    fi
    chmod 0600 "$1"
}

serial() { echo "0x$(openssl rand -hex 16)"; }

fresh_ca=0
if [ -e "$out/ca.crt" ] || [ -e "$out/ca.key" ]; then
    [ -e "$out/ca.crt" ] && [ -e "$out/ca.key" ] || die "$out has only half of the CA; use --force"
    echo "kept   $out/ca.crt"
else
    new_key "$out/ca.key"
    openssl req -x509 -new -key "$out/ca.key" -sha256 -days $((days * 2)) \
        -set_serial "$(serial)" -subj "/O=$org/CN=mwcharge test CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" -out "$out/ca.crt"
    chmod 0644 "$out/ca.crt"
    fresh_ca=1
    echo "wrote  $out/ca.crt"
fi

san=""
for d in $dns; do san="${san:+$san,}DNS:$d"; done
for ip in $ips; do san="${san:+$san,}IP:$ip"; done
usage_bits=digitalSignature
[ "$key_type" = rsa ] && usage_bits="digitalSignature,keyEncipherment"

# leaf NAME SUBJECT EKU [SAN]: NAME.crt/NAME.key signed by the CA, unless both exist (and
# the CA is not new: certificates of a replaced CA would no longer verify).
leaf() {
    name=$1 subject=$2 eku=$3 alt=${4:-}
    if [ "$fresh_ca" -eq 0 ] && [ -e "$out/$name.crt" ] && [ -e "$out/$name.key" ]; then
        echo "kept   $out/$name.crt"
        return
    fi
    new_key "$out/$name.key"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,$usage_bits"
        echo "extendedKeyUsage=$eku"
        echo "subjectKeyIdentifier=hash"
        echo "authorityKeyIdentifier=keyid"
        [ -n "$alt" ] && echo "subjectAltName=$alt"
    } > "$tmp/ext.cnf"
    openssl req -new -key "$out/$name.key" -subj "$subject" -out "$tmp/req.csr"
    openssl x509 -req -in "$tmp/req.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -sha256 \
        -set_serial "$(serial)" -days "$days" -extfile "$tmp/ext.cnf" \
        -out "$out/$name.crt" 2>/dev/null
    chmod 0644 "$out/$name.crt"
    echo "wrote  $out/$name.crt"
}

first_dns=$(echo $dns | cut -d' ' -f1)
leaf csms "/O=$org/CN=$first_dns" serverAuth "$san"
leaf broker "/O=$org/CN=$first_dns" serverAuth "$san"
leaf ems "/O=$org/CN=$ems" clientAuth
for id in "$@"; do
    leaf "stations/$id" "/O=$org/CN=$id" clientAuth
done
