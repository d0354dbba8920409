// A tiny upstream for the console's end-to-end test: answers every request with
// 200 and a JSON echo of the method, path and the X-Keygate-* headers it received.
//   node upstream.mjs PORT
import http from 'node:http';

const port = Number(process.argv[2]);
const server = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    const keygate = Object.fromEntries(Object.entries(req.headers).filter(([k]) => k.startsWith('x-keygate-')));
    const body = JSON.stringify({ method: req.method, path: req.url, keygate });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
});
server.listen(port, '127.0.0.1', () => console.log(`upstream listening on 127.0.0.1:${port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
