#!/bin/sh
# lancache side-loader: copies Ollama models from a lancache server on your LAN straight into
# this machine's Ollama models directory, without touching the internet.
#
#   curl -fsSL http://CACHE/install.sh | sh -s -- llama3:8b qwen2.5:1.5b
#   curl -fsSL http://CACHE/install.sh | sh -s -- --list
#
# Every blob is checked against its sha256 before it is used, downloads resume where they
# stopped, and the manifest (what makes Ollama see the model) is written last, atomically.
# Needs: POSIX sh, curl, and sha256sum (or shasum, or openssl).
set -u
umask 022

# Filled in by the server that serves this script; --server or $LANCACHE_URL override it.
server='@LANCACHE_URL@'
server=${LANCACHE_URL:-$server}

prog=install.sh
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }
say() { printf '%s\n' "$*" >&2; }

usage() {
	cat <<EOF
Usage: $prog [options] MODEL...
       $prog --list

Installs Ollama models from a lancache server into this machine's Ollama models directory.
MODEL is any name form Ollama accepts: llama3, llama3:8b, user/model:tag,
hf.co/user/repo:Q4_K_M, registry.ollama.ai/library/llama3:8b.

Options:
  -l, --list          list the models the cache has, and exit
  -s, --server URL    the cache (default: $server)
  -d, --dir DIR       the Ollama models directory to install into (default: \$OLLAMA_MODELS,
                      else /usr/share/ollama/.ollama/models when the Linux ollama service
                      exists, else ~/.ollama/models)
  -h, --help          this help

Restart nothing: a running 'ollama serve' sees the model at once ('ollama list').
EOF
}

dir=${OLLAMA_MODELS:-}
list=0
models=""
while [ $# -gt 0 ]; do
	case $1 in
	-h | --help) usage; exit 0 ;;
	-l | --list) list=1 ;;
	-s | --server) [ $# -ge 2 ] || die "$1 needs a URL"; server=$2; shift ;;
	--server=*) server=${1#*=} ;;
	-d | --dir) [ $# -ge 2 ] || die "$1 needs a directory"; dir=$2; shift ;;
	--dir=*) dir=${1#*=} ;;
	--) shift; models="$models $*"; break ;;
	-*) die "unknown option $1 (see --help)" ;;
	*) models="$models $1" ;;
	esac
	shift
done

case $server in
http://* | https://*) server=${server%/} ;;
*) die "no cache server known: pass --server http://CACHE (or fetch this script from the cache)" ;;
esac
command -v curl >/dev/null 2>&1 || die "curl is required"

sha256() {
	if command -v sha256sum >/dev/null 2>&1; then
		sha256sum "$1" | cut -d' ' -f1
	elif command -v shasum >/dev/null 2>&1; then
		shasum -a 256 "$1" | cut -d' ' -f1
	elif command -v openssl >/dev/null 2>&1; then
		openssl dgst -sha256 -r "$1" | cut -d' ' -f1
	else
		die "no sha256 tool found (sha256sum, shasum or openssl)"
	fi
}

# Runs curl, leaving the HTTP status in $code, and turns its failures into messages people can
# act on. A server that cannot resume (curl exit 33) leaves code=000 for the caller to retry.
fetch() { # URL OUTFILE [extra curl args...]
	url=$1 out=$2
	shift 2
	code=$($sudo curl -sS -L --connect-timeout 10 -o "$out" -w '%{http_code}' "$@" "$url")
	rc=$?
	case $rc in
	0) ;;
	33) code=000 ;;
	6 | 7 | 28) die "cannot reach the cache at $server (curl exit $rc)" ;;
	23) die "cannot write $out: disk full or not writable" ;;
	*) die "download of $url failed (curl exit $rc)" ;;
	esac
}

sudo=""
if [ $list -eq 1 ]; then
	tmp=$(mktemp) || die "cannot create a temporary file"
	fetch "$server/api/models?format=text" "$tmp"
	[ "$code" = 200 ] || { cat "$tmp" >&2; rm -f "$tmp"; die "the cache answered HTTP $code"; }
	if [ ! -s "$tmp" ]; then
		say "the cache at $server has no models yet"
	else
		awk -F '\t' 'BEGIN { printf "%-50s %-12s %10s  %s\n", "NAME", "ID", "SIZE", "STATUS" }
			{ s = $4; u = "B"; split("KB MB GB TB", us, " ");
			  for (i = 1; s >= 1000 && i <= 4; i++) { s /= 1000; u = us[i] }
			  printf "%-50s %-12s %7.1f %-2s  %s\n", $1, $3, s, u, $5 }' "$tmp"
	fi
	rm -f "$tmp"
	exit 0
fi

[ -n "$models" ] || { usage >&2; exit 2; }

owner=""
if [ -z "$dir" ]; then
	if id ollama >/dev/null 2>&1 && { [ -f /etc/systemd/system/ollama.service ] ||
		[ -f /lib/systemd/system/ollama.service ] || [ -f /usr/lib/systemd/system/ollama.service ]; }; then
		dir=/usr/share/ollama/.ollama/models
		owner=ollama
	else
		[ -n "${HOME:-}" ] || die "HOME is not set: pass --dir"
		dir=$HOME/.ollama/models
	fi
fi
if [ -n "$owner" ] && [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null 2>&1 || die "$dir belongs to the ollama service: run as root"
	sudo=sudo
	say "installing into the ollama service's directory $dir (using sudo)"
fi
part=$dir/.lancache-partial
$sudo mkdir -p "$dir/blobs" "$dir/manifests" "$part" || die "cannot create $dir"

# Splits a model name the way Ollama does: [scheme://][host/][namespace/]model[:tag].
parse_name() {
	n=$1
	case $n in *://*) n=${n#*://} ;; esac
	tag=latest
	case ${n##*/} in *:*) tag=${n##*:}; n=${n%:*} ;; esac
	old_ifs=$IFS
	IFS=/
	# shellcheck disable=SC2086 # splitting on / is the point
	set -- $n
	IFS=$old_ifs
	case $# in
	1) host=registry.ollama.ai ns=library model=$1 ;;
	2) host=registry.ollama.ai ns=$1 model=$2 ;;
	3) host=$1 ns=$2 model=$3 ;;
	*) die "invalid model name '$name': expected [host/][namespace/]model[:tag]" ;;
	esac
	host=$(printf '%s' "$host" | tr '[:upper:]' '[:lower:]')
	for c in "$host" "$ns" "$model" "$tag"; do
		case $c in
		'' | . | .. | *[!A-Za-z0-9._:-]*) die "invalid model name '$name'" ;;
		esac
	done
	case $ns$model$tag in *:*) die "invalid model name '$name'" ;; esac
}

# Makes blobs/sha256-HEX a verified copy of the cache's blob.
install_blob() {
	hex=$1
	final=$dir/blobs/sha256-$hex
	if [ -f "$final" ] && [ "$(sha256 "$final")" = "$hex" ]; then
		say "  sha256:$(printf %.12s "$hex") already present"
		return 0
	fi
	tmpb=$part/sha256-$hex
	for _ in 1 2; do
		say "  sha256:$(printf %.12s "$hex") downloading"
		fetch "$server/blobs/sha256:$hex" "$tmpb" -C -
		case $code in
		200 | 206 | 416 | 000) ;;
		404) die "the cache does not have blob sha256:$hex" ;;
		*) die "blob sha256:$hex: the cache answered HTTP $code" ;;
		esac
		if [ "$(sha256 "$tmpb")" = "$hex" ]; then
			$sudo mv -f "$tmpb" "$final" || die "cannot move the blob into $dir/blobs"
			[ -z "$owner" ] || $sudo chown "$owner:$owner" "$final"
			return 0
		fi
		# A corrupt or stale partial file: start this blob again from scratch, once.
		$sudo rm -f "$tmpb"
	done
	die "blob sha256:$hex failed its sha256 check twice"
}

status=0
for name in $models; do
	parse_name "$name"
	full="$host/$ns/$model:$tag"
	say "$full"
	mtmp=$part/manifest-$$
	fetch "$server/manifests/$full" "$mtmp"
	case $code in
	200) ;;
	404) $sudo rm -f "$mtmp"; say "$prog: error: the cache has no model $name (try --list)"; status=1; continue ;;
	409) cat "$mtmp" >&2; $sudo rm -f "$mtmp"; status=1; continue ;;
	*) cat "$mtmp" >&2; $sudo rm -f "$mtmp"; die "manifest of $name: the cache answered HTTP $code" ;;
	esac
	hexes=$(grep -o 'sha256:[0-9a-f]\{64\}' "$mtmp" | cut -d: -f2 | sort -u)
	[ -n "$hexes" ] || die "the manifest of $name references no blobs"
	for hex in $hexes; do
		install_blob "$hex"
	done
	mdir=$dir/manifests/$host/$ns/$model
	$sudo mkdir -p "$mdir" || die "cannot create $mdir"
	$sudo mv -f "$mtmp" "$mdir/$tag" || die "cannot write the manifest into $mdir"
	[ -z "$owner" ] || $sudo chown -R "$owner:$owner" "$dir/manifests/$host" "$part"
	id=$(sha256 "$mdir/$tag")
	say "installed $name (ID $(printf %.12s "$id")) into $dir"
done
# Leave no empty work area behind (one with a partial download stays, for the next run to resume).
$sudo rmdir "$part" 2>/dev/null
exit $status
