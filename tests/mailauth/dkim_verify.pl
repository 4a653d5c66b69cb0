#!/usr/bin/perl
# An independent DKIM verifier for the tests: Perl's Mail::DKIM (Debian's
# libmail-dkim-perl), its key lookups sent by Net::DNS to the test's DNS server.
# Usage: dkim_verify.pl PORT < message ; prints the overall result, then one
# line per signature: "RESULT d=DOMAIN s=SELECTOR a=ALGORITHM".
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;

my $port = shift @ARGV or die "usage: $0 PORT\n";
my $res = Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'],
    port        => $port,
    recurse     => 0,
    tcp_timeout => 5,
    udp_timeout => 5,
);
Mail::DKIM::DNS::resolver($res);
my $dkim = Mail::DKIM::Verifier->new();
while (my $line = <STDIN>) {
    $line =~ s/\015?\012\z/\015\012/;
    $dkim->PRINT($line);
}
$dkim->CLOSE;
print $dkim->result, "\n";
foreach my $sig ($dkim->signatures) {
    printf "%s d=%s s=%s a=%s\n", $sig->result_detail, $sig->domain, $sig->selector, $sig->algorithm;
}
