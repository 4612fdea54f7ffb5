#!/usr/bin/perl
# An XML-RPC client in another language than the server's, for the tests:
# Perl's RPC::XML, whose parser refuses a methodResponse that breaks the
# specification's structure (two <params>, a <param> without a <value>, a
# fault that is not a struct), over TLS with a client certificate.
#
#     xmlrpc_client.pl URL CA CERT KEY METHOD [JSON-ARRAY-OF-ARGS]
#     xmlrpc_client.pl --parse < RESPONSE.xml
#
# Arguments: JSON true/false are <boolean>, integers <int> (<i8> beyond 32
# bits), strings <string>, objects <struct>, arrays <array>, and
# {"base64": "TEXT"} is <base64> of TEXT's UTF-8 bytes.  Prints one JSON
# object: {"result": VALUE} or {"fault": {"faultCode": N, "faultString": S}},
# where VALUE keeps the wire's types apart: a struct is an object, an array a
# list, a boolean true/false, base64 {"base64": "<base64 text>"}, a number a
# number.  --parse reads a methodResponse from stdin with the same parser
# and prints it the same way.  Any refusal (TLS, HTTP, a malformed response) is one line on
# stderr and exit status 1.
use strict;
use warnings;

use B ();
use JSON::PP ();
use MIME::Base64 qw(encode_base64);
use RPC::XML;
use RPC::XML::Client;
use RPC::XML::ParserFactory;

my $json = JSON::PP->new->canonical->allow_nonref;
if (@ARGV == 1 && $ARGV[0] eq '--parse') {
    binmode STDIN;
    my $body = do { local $/; <STDIN> };
    report(RPC::XML::ParserFactory->new->parse($body));
}
die "usage: $0 URL CA CERT KEY METHOD [JSON-ARGS]\n" if @ARGV < 5;
my ($url, $ca, $cert, $key, $method, $args_json) = @ARGV;
my $args = $json->decode($args_json // '[]');

sub typed {
    my ($arg) = @_;
    if (JSON::PP::is_bool($arg)) {
        return RPC::XML::boolean->new($arg ? 1 : 0);
    }
    if (ref $arg eq 'HASH') {
        if (keys %$arg == 1 && exists $arg->{base64}) {
            my $bytes = $arg->{base64};
            utf8::encode($bytes);
            return RPC::XML::base64->new($bytes);
        }
        return RPC::XML::struct->new(map { $_ => typed($arg->{$_}) } keys %$arg);
    }
    if (ref $arg eq 'ARRAY') {
        return RPC::XML::array->new(map { typed($_) } @$arg);
    }
    # JSON numbers are numbers to Perl, JSON strings are strings.
    my $flags = B::svref_2object(\$arg)->FLAGS;
    if (!($flags & B::SVp_POK) && ($flags & B::SVp_IOK)) {
        return abs($arg) < 2**31 ? RPC::XML::int->new($arg) : RPC::XML::i8->new($arg);
    }
    if (!($flags & B::SVp_POK) && ($flags & B::SVp_NOK)) {
        return RPC::XML::double->new($arg);
    }
    return RPC::XML::string->new($arg);
}

sub plain {
    my ($value) = @_;
    my $type = $value->type;
    if ($type eq 'struct') {
        return { map { $_ => plain($value->{$_}) } keys %$value };
    }
    if ($type eq 'array') {
        return [ map { plain($_) } @$value ];
    }
    if ($type eq 'boolean') {
        return $value->value ? JSON::PP::true : JSON::PP::false;
    }
    if ($type eq 'base64') {
        return { base64 => encode_base64($value->value, '') };
    }
    if ($type =~ /\A(?:int|i4|i8|double)\z/) {
        return 0 + $value->value;
    }
    return '' . $value->value;
}

my $client = RPC::XML::Client->new(
    $url,
    useragent => [
        ssl_opts => {
            SSL_ca_file     => $ca,
            SSL_cert_file   => $cert,
            SSL_key_file    => $key,
            verify_hostname => 1,
        },
        timeout => 30,
    ],
);
die "$client\n" unless ref $client;
report($client->send_request($method, map { typed($_) } @$args));

sub report {
    my ($response) = @_;
    if (!ref $response) {
        $response =~ s/\s+/ /g;
        print STDERR "$response\n";
        exit 1;
    }
    $response = $response->value if $response->isa('RPC::XML::response');
    if ($response->is_fault) {
        my $fault = { faultCode => 0 + $response->code, faultString => $response->string };
        print $json->encode({ fault => $fault }), "\n";
    } else {
        print $json->encode({ result => plain($response) }), "\n";
    }
    exit 0;
}
