// s3rver (npm, pinned in infra/local/persistent.py), with one deviation from S3 mended: a suffix
// range ("Range: bytes=-N", the last N bytes) is read by s3rver as bytes 0..N.  The API's
// downloads redirect clients to presigned URLs, and a client's own Range goes with them, so
// here a suffix range on a presigned GET is turned into the explicit range it means.
//
//   node infra/local/s3_server.js NODE_PREFIX ADDRESS PORT DIRECTORY
'use strict';

const fs = require('fs');
const path = require('path');

const [prefix, address, port, directory] = process.argv.slice(2);
const S3rver = require(path.join(prefix, 'node_modules', 's3rver'));

const server = new S3rver({ address, port: Number(port), directory, silent: true, vhostBuckets: false });

server.middleware.unshift(async (ctx, next) => {
  const suffix = /^bytes=-(\d+)$/.exec(ctx.get('range'));
  // Only presigned requests: a header-signed one signs its Range, which must stay as sent.
  if (suffix && ctx.method === 'GET' && (ctx.query['X-Amz-Signature'] || ctx.query.Signature)) {
    const [, bucket, ...key] = decodeURIComponent(ctx.path).split('/');
    try {
      const size = fs.statSync(server.store.getResourcePath(bucket, key.join('/'), 'object')).size;
      const want = Number(suffix[1]);
      if (want > 0 && size > 0) {
        ctx.request.headers.range = `bytes=${Math.max(0, size - want)}-${size - 1}`;
      }
    } catch (e) {
      // No such object: s3rver answers NoSuchKey itself.
    }
  }
  await next();
});

server.run().then(({ address: a, port: p }) => console.log('S3rver listening on %s:%d', a, p));
