// bench only: every DNS query of this Haraka goes to the bench's loopback DNS server,
// and the connect-time reverse lookup is answered here, so nothing leaves the machine.
const dns = require('node:dns')

exports.register = function () {
    const server = process.env.BENCH_DNS_SERVER
    if (server) dns.setServers([server])
    this.register_hook('lookup_rdns', 'no_rdns')
}

exports.no_rdns = function (next) {
    next(OK, 'localhost')
}
