/** Shell helpers for a stand-in agent (the shell image, which has perl) that speaks HTTP to the egress proxy. */

/** `http METHOD-LINE HOST PORT`: sends one request line to HOST:PORT and prints the answer, or `connect failed`. */
export const HTTP = String.raw`http () { perl -MIO::Socket::INET -e '($l,$h,$p)=@ARGV; $s=IO::Socket::INET->new(PeerAddr=>$h,PeerPort=>$p,Timeout=>5) or do { print "connect failed\n"; exit 0 }; $l =~ s/\\n/\r\n/g; print $s $l; print while <$s>' "$1" "$2" "$3"; echo; }`
/** The proxy's address and port, from HTTP_PROXY (http://ADDRESS:PORT), as $PH and $PP. */
export const PROXY = 'PH=$(echo "$HTTP_PROXY" | sed "s#http://##; s#:.*##"); PP=$(echo "$HTTP_PROXY" | sed "s#.*:##")'

/** The text between `== NAME` and the next `== ` line of a script's output. */
export const section = (out: string, name: string) => out.split(`== ${name}\n`)[1]?.split('\n== ')[0] ?? ''
