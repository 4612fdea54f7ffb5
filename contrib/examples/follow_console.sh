#!/bin/sh
# Follow a guest's serial console with wget, like `tail -f` on its boot log.
#
#   follow_console.sh VMID [HOST[:PORT]]
#
# Prints the last $TAIL bytes the server retains (default 4096), then streams
# the guest's output live until interrupted.  Exit status 0 when the console
# is destroyed or its guest is gone for good; non-zero when the server stops
# (retry then).  PKI is a directory in VDSM's
# layout (default /etc/pki/vdsm); CLIENT picks the certificate pair in it
# (default engine: certs/enginecert.pem, keys/enginekey.pem).
set -eu
VMID=${1:?usage: $0 VMID [HOST[:PORT]]}
SERVER=${2:-localhost}
case $SERVER in *:*) ;; *) SERVER=$SERVER:54321 ;; esac
# 0 is this host, as for vdsmconsole-client (the certificate names localhost).
case $SERVER in 0:*) SERVER=localhost${SERVER#0} ;; esac
PKI=${PKI:-/etc/pki/vdsm}
CLIENT=${CLIENT:-engine}

exec wget -q -O - \
    --ca-certificate="$PKI/certs/cacert.pem" \
    --certificate="$PKI/certs/${CLIENT}cert.pem" \
    --private-key="$PKI/keys/${CLIENT}key.pem" \
    "https://$SERVER/consoleStream/$VMID?tail=${TAIL:-4096}"
