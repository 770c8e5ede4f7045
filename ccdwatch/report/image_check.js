window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.dataset.imagesTotal = String(imgs.length);
  document.body.dataset.imagesOk = broken.length ? 'false' : 'true';
  if (broken.length) {
    document.body.dataset.imagesBroken = broken.map(function (i) { return i.getAttribute('src'); }).join(' ');
  }
});
