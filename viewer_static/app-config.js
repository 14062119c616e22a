/** @type {AppTypes.Config} */
// OHIF configuration for the viewer bundled with dicomweb-server (served at /app-config.js
// in place of the build's own). The server prepends one line setting
// window.dicomwebServerRoot to its configured DICOMweb root (default "/dicom-web").
//
// One data source: this server, same origin. Only options the server backs are on:
//   - QIDO-RS includefield, wildcard (*, ?) and fuzzy person-name matching;
//   - WADO-RS frames for images, server-rendered series thumbnails;
//   - series-level metadata on demand (enableStudyLazyLoad), BulkDataURIs;
//   - STOW-RS upload from the browser (dicomUploadEnabled).
// No third-party origins: no demo servers, no CDN, no local-file or ?url= data sources.
//
// Authentication (when the server requires it): see README, "Viewer and authentication":
// add an `oidc` block, or set the data source's `requestOptions.auth`, so OHIF sends an
// `Authorization: Bearer ...` header with every DICOMweb call.
(function () {
  const root = window.location.origin + (window.dicomwebServerRoot || '/dicom-web');

  window.config = {
    name: 'dicomweb-server',
    routerBasename: null,
    extensions: [],
    modes: [],
    customizationService: {},
    showStudyList: true,
    maxNumberOfWebWorkers: 3,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    groupEnabledModesFirst: true,
    // OHIF's "investigational use only" notice: shown once, then again after 30 days.
    investigationalUseDialog: { option: 'configure', days: 30 },
    maxNumRequests: {
      interaction: 100,
      thumbnail: 5,
      prefetch: 25,
    },
    showErrorDetails: 'production',
    defaultDataSourceName: 'dicomweb',
    dataSources: [
      {
        namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
        sourceName: 'dicomweb',
        configuration: {
          friendlyName: 'dicomweb-server',
          name: 'dicomweb-server',
          qidoRoot: root,
          wadoRoot: root,
          wadoUriRoot: window.location.origin + '/wado',
          qidoSupportsIncludeField: true,
          supportsWildcard: true,
          supportsFuzzyMatching: true,
          imageRendering: 'wadors',
          // Series thumbnails from the server (PS3.18 10.4.1.1.6), fetched with the same
          // headers as every DICOMweb call, so they work when authentication is on
          // ('thumbnailDirect' would use plain <img src> without the bearer token).
          thumbnailRendering: 'thumbnail',
          thumbnailRequestStrategy: 'fetch',
          enableStudyLazyLoad: true,
          supportsReject: false,
          staticWado: false,
          singlepart: false,
          bulkDataURI: {
            enabled: true,
          },
          // Our Accept parser reads quoted and unquoted parameters alike.
          omitQuotationForMultipartRequest: true,
          dicomUploadEnabled: true,
        },
      },
    ],
    httpErrorHandler: error => {
      console.warn('DICOMweb request failed', error && error.status);
    },
  };
})();
